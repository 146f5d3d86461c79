"""The STFT front end: one implementation for training, inference and ONNX export.

MP-SENet convention: tensors are [B, F, T], the magnitude is power-law compressed, the phase
comes from atan2. Each architecture declares its own ``StftFrontEnd`` (STFT settings, compression,
normalisation, the shortest input it accepts), so the trainer, the enhancer and the exporter never
hold STFT settings of their own.

ONNX has no ISTFT operator and an exported ``torch.istft`` does not load in ONNX Runtime, so while
a graph is being exported (``dft_transforms()``) the same transforms run on DFT bases instead: the
STFT is a strided conv1d with windowed cos/sin kernels over the reflect-padded signal; the inverse is
a conv_transpose1d with the windowed inverse-DFT kernels (irfft and overlap-add in one op), divided by the overlap-added
squared window and centre-trimmed. The bases are computed inside the graph from integer ranges, so
the file holds only the model's weights. Both paths agree to float rounding (export parity ≤ 1e-4).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn

NORMALISATIONS = ("rms", "max", "none")


def rms_gain(noisy: torch.Tensor) -> torch.Tensor:
    """Per-utterance gain g = sqrt(N / sum(noisy^2)) over the last axis (keepdim)."""
    n = noisy.shape[-1]
    return torch.sqrt(n / (noisy.pow(2).sum(-1, keepdim=True) + 1e-12))


_DFT_TRANSFORMS = False  # set by dft_transforms(): ONNX export, and tests of that path in eager mode


@contextmanager
def dft_transforms() -> Iterator[None]:
    """Within this block every front end computes its STFT / inverse STFT with DFT-basis convolutions,
    the form ONNX export captures (inference/export.py exports inside it)."""
    global _DFT_TRANSFORMS
    previous, _DFT_TRANSFORMS = _DFT_TRANSFORMS, True
    try:
        yield
    finally:
        _DFT_TRANSFORMS = previous


def _exporting() -> bool:
    return _DFT_TRANSFORMS


@dataclass(frozen=True)
class StftFrontEnd:
    """STFT settings, magnitude compression and input normalisation of one architecture."""

    n_fft: int = 400
    hop_length: int = 100
    win_length: int = 400
    compress_factor: float = 0.3
    normalisation: str = "rms"  # rms: one gain per utterance, sqrt(N / sum(x^2)); max: 1 / max|x|; undone at the end
    exact_polar: bool = False   # magnitude and phase without MP-SENet's epsilons (MUSE: torch.abs / angle)
    segment_samples: int = 0    # > 0: enhance in segments of this length (MUSE's protocol, dsp/segments.py)

    KEYS = ("n_fft", "hop_length", "win_length", "compress_factor")

    @classmethod
    def from_config(cls, cfg: Any, **fixed: Any) -> "StftFrontEnd":
        """The front end of a checked model config (core/settings.ModelConfig: its KEYS as attributes)."""
        front = cls(**{k: getattr(cfg, k) for k in cls.KEYS}, **fixed)
        if front.normalisation not in NORMALISATIONS:
            raise ValueError(f"front end normalisation {front.normalisation!r}: one of {NORMALISATIONS}")
        return front

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in self.KEYS}

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def min_samples(self) -> int:
        """Shortest waveform analysed without zero-padding (reflect padding needs > n_fft / 2)."""
        return self.n_fft

    # -- waveform level ---------------------------------------------------------------------------

    def normalise(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised waveform, gain); divide the model's output by the gain to undo it."""
        if self.normalisation == "rms":
            gain = rms_gain(wav)
        elif self.normalisation == "max":  # SGMSE+: divide by the noisy peak
            gain = 1.0 / wav.abs().amax(-1, keepdim=True).clamp_min(1e-8)
        else:
            gain = torch.ones_like(wav[..., :1])
        return wav * gain, gain

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad [B, N] to at least ``min_samples`` (sym_max and narrow keep N symbolic in exports)."""
        padded_len = torch.sym_max(x.shape[-1], self.min_samples)
        return torch.cat([x, x.new_zeros(x.shape[0], self.min_samples)], dim=-1).narrow(-1, 0, padded_len)

    # -- spectra ----------------------------------------------------------------------------------

    def analyse(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveform [B, N] -> (compressed magnitude, phase, compressed complex [B, F, T, 2]).

        Frames centred on a reflection point (the first; the last when N - 1 is a multiple of the
        hop) are even-symmetric, so their spectrum is real. Their imaginary parts are set to 0:
        otherwise rounding noise decides whether atan2 gives +pi or -pi on negative real bins, and
        the model's input would depend on the FFT implementation (the ONNX graph's DFT differs).
        """
        re, im = self._dft(wav) if _exporting() else self._torch_stft(wav)
        if self.exact_polar and not _exporting():
            # MUSE: torch.abs / angle of torch.stft as it rounds, reflected frames included. Its weights
            # respond to the ±π that rounding picks there, so only this reproduces its outputs bit for
            # bit; the DFT path below (the exported graph and its eager twin) sets those frames'
            # imaginary parts to 0, so ONNX Runtime and PyTorch agree (export.check_parity reports
            # the difference as polar_rounding_max_abs)
            spec_c = torch.complex(re, im)
            mag, pha = spec_c.abs(), spec_c.angle()
        else:
            centres = torch.arange(re.shape[-1], device=wav.device) * self.hop_length
            reflected = (centres == 0) | (centres == wav.shape[-1] - 1)
            # stacked [B, F, T, 2] first: the element-wise kernels then run on the same memory layout
            # as in every run so far, which keeps results bit-identical to earlier versions
            spec = torch.stack((re, torch.where(reflected, torch.zeros_like(im), im)), -1)
            if self.exact_polar:  # exporting: ONNX has no Atan2 and its decomposition differs from
                # torch at y = ±0 (x < 0, x = -0), so the real axis is pinned explicitly
                mag = torch.sqrt(spec.pow(2).sum(-1).clamp_min(1e-30))  # the floor keeps the gradient finite
                on_axis = torch.where(spec[..., 0] < 0, torch.full_like(mag, math.pi), torch.zeros_like(mag))
                pha = torch.where(spec[..., 1] == 0, on_axis, torch.atan2(spec[..., 1], spec[..., 0]))
            else:
                mag = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
                pha = torch.atan2(spec[..., 1] + 1e-10, spec[..., 0] + 1e-5)
        mag = mag.pow(self.compress_factor)
        com = torch.stack((mag * torch.cos(pha), mag * torch.sin(pha)), dim=-1)
        return mag, pha, com

    def synthesise(self, mag: torch.Tensor, pha: torch.Tensor, length: int) -> torch.Tensor:
        """(compressed magnitude, phase) [B, F, T] -> waveform [B, length]."""
        mag = mag.pow(1.0 / self.compress_factor)
        if _exporting():
            return self._inverse_dft(mag * torch.cos(pha), mag * torch.sin(pha), length)
        spec = torch.complex(mag * torch.cos(pha), mag * torch.sin(pha))
        window = torch.hann_window(self.win_length, device=mag.device, dtype=mag.dtype)
        return torch.istft(spec, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                           window=window, center=True, length=length)

    def _torch_stft(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.hann_window(self.win_length, device=wav.device, dtype=wav.dtype)
        spec = torch.stft(wav, self.n_fft, hop_length=self.hop_length, win_length=self.win_length, window=window,
                          center=True, pad_mode="reflect", normalized=False, return_complex=True)
        return spec.real, spec.imag

    # -- the exportable path ----------------------------------------------------------------------

    def _window(self, device: torch.device) -> torch.Tensor:
        window = torch.hann_window(self.win_length, dtype=torch.float64)
        left = (self.n_fft - self.win_length) // 2  # torch.stft centres a shorter window inside n_fft
        window = nn.functional.pad(window, (left, self.n_fft - self.win_length - left))
        return window.float().to(device)

    def dft_bases(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(analysis, synthesis kernels [2F, 1, n_fft], window): rows 0..F-1 real, F..2F-1 imaginary.

        Analysis: X_k = Σ x[n] w[n] e^{-2πikn/N} (torch.stft). Synthesis: irfft (DC and Nyquist
        counted once, their imaginary parts ignored, as torch.istft) times the window. The phase
        index k·n is reduced mod N to (−N/2, N/2] before the float conversion, and sines that are
        exactly zero in theory are set to 0, so DC / Nyquist imaginary parts are exactly 0.
        """
        n_fft = self.n_fft
        window = self._window(device)
        k = torch.arange(self.n_bins, device=device)[:, None]
        n = torch.arange(n_fft, device=device)[None, :]
        m = (k * n) % n_fft
        m = torch.where(2 * m > n_fft, m - n_fft, m)
        angle = m.to(torch.float32) * (2 * math.pi / n_fft)
        cos = torch.cos(angle)
        sin = torch.where((m == 0) | (2 * m == n_fft), torch.zeros_like(angle), torch.sin(angle))
        analysis = torch.cat([cos * window, -sin * window])[:, None, :]
        once = (k == 0) | (2 * k == n_fft)
        scale = torch.where(once, torch.ones_like(cos[:, :1]), 2 * torch.ones_like(cos[:, :1])) / n_fft
        synthesis = analysis * torch.cat([scale, scale])[:, :, None]
        return analysis, synthesis, window

    def _dft(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.n_fft // 2
        analysis, _, _ = self.dft_bases(wav.device)
        x = nn.functional.pad(wav[:, None, :], (half, half), mode="reflect")
        spec = nn.functional.conv1d(x, analysis, stride=self.hop_length)  # [B, 2F, T]
        return spec[:, : self.n_bins], spec[:, self.n_bins:]

    def _inverse_dft(self, re: torch.Tensor, im: torch.Tensor, length: int) -> torch.Tensor:
        half = self.n_fft // 2
        _, synthesis, window = self.dft_bases(re.device)
        frames = nn.functional.conv_transpose1d(torch.cat([re, im], dim=1), synthesis, stride=self.hop_length)[:, 0]
        ones = torch.ones_like(re[:1, :1])
        envelope = nn.functional.conv_transpose1d(ones, (window * window)[None, None, :], stride=self.hop_length)[:, 0]
        return frames.narrow(-1, half, length) / envelope.narrow(-1, half, length)
