"""The project's resampler in numpy: torchaudio's ``functional.resample`` (windowed sinc), same samples.

torchaudio's algorithm (``_get_sinc_resample_kernel`` / ``_apply_sinc_resample_kernel``), rewritten so
that enhancing files needs no torch:

- the rates are reduced by their gcd to orig' → new';
- output phase j (0 ≤ j < new') has its own FIR kernel over input offsets i ∈ [−w, w + orig'):
  sinc(π·t)·window(t)·base/orig' at t = base·(i/orig' − j/new'), clamped to ±lowpass_filter_width,
  with base = min(orig', new')·rolloff (the low-pass cut-off, below both Nyquists) and
  w = ceil(lowpass_filter_width·orig'/base); window is Kaiser(beta) (or Hann) over that range;
- the signal is zero-padded by w on the left and w + orig' on the right and convolved with the
  kernel bank at stride orig': input frame f gives output samples [f·new', (f+1)·new');
- the output is cut to ceil(new'·n/orig') samples.

The strided convolution is done without copying frames: the padded signal is viewed as overlapping
frames (numpy stride tricks, frame f = padded[f·orig' + lo : f·orig' + hi]) and contracted with the
kernels by ``np.einsum``. Each phase reads about 2w of its 2w + orig' taps (outside them t is
clamped to the width, where the sinc is zero and float32 leaves ~1e-14), so phases go in groups of
PHASE_GROUP with only their groups' taps [lo, hi): 44.1 → 16 kHz reads 416 taps per output sample
where torchaudio multiplies 815.

einsum rather than a BLAS matrix product, on purpose: OpenBLAS's sgemm gives different roundings
with 1 and 2 threads (measured up to 6e-7 here), and the project's outputs must be the same bytes
whatever the worker count (tests/data/test_prepare.py). einsum runs one thread and sums each output
in a fixed order, so a sample depends only on its input window: block-wise resampling
(streaming.StreamResampler) gives the whole-signal samples bit for bit. It is 1-2x torchaudio's
time on one thread, faster where torchaudio's strided convolution is inefficient (48 → 16 kHz);
bench/bench_resample.py measures it.

Kernels are computed in float32 as torchaudio computes them for a float32 signal (its rounding
included), the products run in float32: the output matches torchaudio's to ~2e-6
(tests/dsp/test_resampler.py). Only the taps inside the support are computed, so odd rates whose
gcd is small (44101 Hz → 16000 Hz: orig' = 44101, new' = 16000) cost memory in proportion to the
band (30 MB there), not to the new'·(2w + orig') taps of torchaudio's bank (2.8 GB).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

PHASE_GROUP = 16  # output phases per product: their taps span about 2w + 16·orig'/new' of the 2w + orig'
KAISER_BETA = 14.769656459379492  # torchaudio's default beta


class _Geometry:
    """The reduced rates, cut-off and kernel support of one resampling (torchaudio's arithmetic)."""

    def __init__(self, orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float, method: str,
                 beta: float | None):
        if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
            raise ValueError(f"sample rates must be positive integers, got {orig_sr} and {new_sr}")
        if lowpass_filter_width <= 0:
            raise ValueError("lowpass_filter_width must be positive")
        if method not in ("sinc_interp_kaiser", "sinc_interp_hann"):
            raise ValueError(f"unknown resampling method {method!r}")
        g = math.gcd(int(orig_sr), int(new_sr))
        self.orig, self.new = int(orig_sr) // g, int(new_sr) // g
        self.lw, self.method = int(lowpass_filter_width), method
        self.beta = KAISER_BETA if beta is None else float(beta)
        self.base = min(self.orig, self.new) * rolloff  # the cut-off, in units of the reduced rates
        self.width = math.ceil(self.lw * self.orig / self.base)
        self.taps = 2 * self.width + self.orig

    def kernel(self, j0: int, j1: int, i0: int, i1: int) -> np.ndarray:
        """Taps [i0, i1) of output phases [j0, j1): a block of torchaudio's kernel bank [new', taps].

        Every step in float32, in torchaudio's order (it computes the bank in the signal's dtype):
        float32 rounding of t moves taps by up to 3e-5 from the exact float64 kernel (44.1 → 16 kHz:
        4e-6), and this reproduces torchaudio's taps to ~1e-6. Each tap depends on (j, i) alone, so a
        block equals the same part of the whole bank.
        """
        f32, lw = np.float32, self.lw
        idx = np.arange(i0 - self.width, i1 - self.width, dtype=f32)[None, :] / f32(self.orig)
        t = np.arange(-j0, -j1, -1, dtype=f32)[:, None] / f32(self.new) + idx
        t = np.clip(t * f32(self.base), f32(-lw), f32(lw))
        if self.method == "sinc_interp_hann":
            window = np.cos(t * f32(math.pi / lw / 2)) ** 2
        else:
            b = f32(self.beta)
            arg = b * np.sqrt(np.maximum(f32(1) - (t / f32(lw)) ** 2, f32(0)))
            window = np.i0(arg.astype(np.float64)).astype(f32) / f32(np.i0(np.float64(b)))
        t = t * f32(math.pi)
        with np.errstate(invalid="ignore", divide="ignore"):
            kernels = np.where(t == 0, f32(1), np.sin(t) / t).astype(f32)
        return kernels * (window * f32(self.base / self.orig))

    def support(self, j0: int, j1: int) -> tuple[int, int]:
        """[first, last + 1) taps inside the filter's support (|t| < lowpass_filter_width) for phases [j0, j1).

        Outside it t is clamped to the width, where the sinc is zero (float32 leaves ~1e-14): those
        taps count as zeros, so each phase reads about 2w of its 2w + orig' taps.
        """
        reach = self.orig * self.lw / self.base
        lo = math.floor(self.width + self.orig * j0 / self.new - reach) - 1
        hi = math.ceil(self.width + self.orig * (j1 - 1) / self.new + reach) + 2
        return max(0, lo), min(self.taps, hi)


@lru_cache(maxsize=32)
def sinc_kernel(orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float,
                method: str = "sinc_interp_kaiser", beta: float | None = None) -> tuple[np.ndarray, int, int, int]:
    """(kernel bank [new', 2w + orig'] float32, w, orig', new') for resampling ``orig_sr`` → ``new_sr``.

    torchaudio's ``_get_sinc_resample_kernel`` for float32 signals (for tests and inspection:
    ``sinc_resample`` computes only the taps inside the support).
    """
    geo = _Geometry(orig_sr, new_sr, lowpass_filter_width, rolloff, method, beta)
    kernels = geo.kernel(0, geo.new, 0, geo.taps)
    kernels.setflags(write=False)
    return kernels, geo.width, geo.orig, geo.new


@lru_cache(maxsize=32)
def _plan(orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float, method: str,
          beta: float | None) -> tuple[_Geometry, list[tuple[int, int, int, int, np.ndarray]]]:
    """The geometry and the kernel bank cut into groups of PHASE_GROUP output phases, each group
    keeping only the taps inside its phases' support: [(j0, j1, first tap, end tap, taps [j1 − j0, end − first])]."""
    geo = _Geometry(orig_sr, new_sr, lowpass_filter_width, rolloff, method, beta)
    groups = []
    for j0 in range(0, geo.new, PHASE_GROUP):
        j1 = min(geo.new, j0 + PHASE_GROUP)
        lo, hi = geo.support(j0, j1)
        taps = np.ascontiguousarray(geo.kernel(j0, j1, lo, hi))
        taps.setflags(write=False)
        groups.append((j0, j1, lo, hi, taps))
    return geo, groups


def sinc_resample(x: np.ndarray, orig_sr: int, new_sr: int, *, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99, method: str = "sinc_interp_hann", beta: float | None = None
                  ) -> np.ndarray:
    """Resample ``x`` [..., time] from ``orig_sr`` to ``new_sr``: torchaudio.functional.resample's samples.

    Same arguments and defaults as torchaudio (the project passes its RESAMPLING settings); float32
    out, [..., ceil(new·n/orig)].
    """
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == new_sr:
        return x.copy()
    geo, groups = _plan(int(orig_sr), int(new_sr), int(lowpass_filter_width), float(rolloff), method,
                        None if beta is None else float(beta))
    shape = x.shape
    signals = x.reshape(-1, shape[-1])
    n = signals.shape[1]
    frames = n // geo.orig + 1  # conv1d's output frames over the padded length n + 2w + orig'
    target = -(-geo.new * n // geo.orig)  # ceil(new·n/orig) in integers (torchaudio rounds it in float32)
    out = np.empty((signals.shape[0], frames, geo.new), np.float32)
    padded = np.zeros(n + geo.taps, np.float32)  # torchaudio pads w left and w + orig' right
    item = padded.itemsize
    for c, signal in enumerate(signals):
        padded[geo.width: geo.width + n] = signal
        for j0, j1, lo, hi, taps in groups:
            # frame f of the group: padded[f·orig' + lo : f·orig' + hi], overlapping rows of one buffer
            view = as_strided(padded[lo:], shape=(frames, hi - lo), strides=(geo.orig * item, item),
                              writeable=False)
            out[c, :, j0:j1] = np.einsum("fk,jk->fj", view, taps)
    return out.reshape(signals.shape[0], -1)[:, :target].reshape(shape[:-1] + (target,))
