"""SGMSE+'s complex spectrogram in numpy (sp-uhh/sgmse data_module.py), for the torch-free runtime.

STFT: periodic Hann window of n_fft samples, hop, centred frames with reflect padding (torch.stft's
``center=True``). Compression: c̃ = β |c|^α e^{j∠c} (α 0.5, β 0.15), so the network sees a
magnitude-compressed, phase-preserving spectrogram; ``expand`` undoes it. The PyTorch twin used in
training is models/sgmse/model.py's front end; tests/diffusion check that both agree.
"""

from __future__ import annotations

import numpy as np


def hann(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window(n, periodic=True))."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(wav: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """[B, N] float -> complex64 [B, n_fft // 2 + 1, 1 + N // hop]."""
    half = n_fft // 2
    mode = "reflect" if wav.shape[-1] > half else "constant"  # reflect needs more samples than the pad
    x = np.pad(wav.astype(np.float32), ((0, 0), (half, half)), mode=mode)
    n_frames = 1 + wav.shape[-1] // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = x[:, idx] * hann(n_fft)  # [B, T, n_fft]
    return np.fft.rfft(frames, axis=-1).astype(np.complex64).transpose(0, 2, 1)


def istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """complex [B, F, T] -> float32 [B, length]: overlap-add divided by the summed squared window."""
    frames = np.fft.irfft(spec.transpose(0, 2, 1), n=n_fft, axis=-1) * hann(n_fft)  # [B, T, n_fft]
    n_frames = frames.shape[1]
    total = n_fft + hop * (n_frames - 1)
    out = np.zeros((spec.shape[0], total), dtype=np.float64)
    env = np.zeros(total, dtype=np.float64)
    w2 = hann(n_fft).astype(np.float64) ** 2
    for i in range(n_frames):
        out[:, i * hop:i * hop + n_fft] += frames[:, i]
        env[i * hop:i * hop + n_fft] += w2
    half = n_fft // 2
    out, env = out[:, half:half + length], env[half:half + length]
    y = out / np.where(env > 1e-11, env, 1.0)
    if y.shape[-1] < length:
        y = np.pad(y, ((0, 0), (0, length - y.shape[-1])))
    return y.astype(np.float32)


def compress(spec: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """β |c|^α e^{j∠c}."""
    mag = np.abs(spec)
    return (beta * spec * np.where(mag > 0, mag, 1.0) ** (alpha - 1)).astype(np.complex64)


def expand(spec: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """The inverse of ``compress``: (|c̃|/β)^{1/α} e^{j∠c̃}."""
    mag = np.abs(spec)
    safe = np.where(mag > 0, mag, 1.0)
    return (spec / safe * (safe / beta) ** (1 / alpha) * (mag > 0)).astype(np.complex64)


def as_channels(spec: np.ndarray) -> np.ndarray:
    """complex [B, F, T] -> float32 [B, 2, F, T] (Re, Im): the network's layout."""
    return np.stack([spec.real, spec.imag], axis=1).astype(np.float32)


def as_complex(chan: np.ndarray) -> np.ndarray:
    """float [B, 2, F, T] -> complex64 [B, F, T]."""
    return (chan[:, 0] + 1j * chan[:, 1]).astype(np.complex64)
