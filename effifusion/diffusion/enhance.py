"""Waveform in, waveform out around the sampler: the one inference path of the diffusion models.

PyTorch (models/sgmse/model.py) and ONNX Runtime (inference/backends.py) both call ``enhance_normalised``
with their own network callables, so the STFT, padding, sampler and noise are the same code in both.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from effifusion.diffusion import spectrum
from effifusion.diffusion.sampler import PredictFn, SamplerSettings, ScoreFn, sample
from effifusion.diffusion.sde import OuveSde


def enhance_normalised(x: np.ndarray, *, n_fft: int, hop: int, alpha: float, beta: float, time_multiple: int,
                       score_fn: ScoreFn, predict_fn: PredictFn | None, sde: OuveSde, settings: SamplerSettings,
                       on_step: Callable[[], None] | None = None) -> np.ndarray:
    """[B, N] (peak-normalised) -> [B, N]: compressed STFT, frames zero-padded to ``time_multiple``
    (NCSN++'s downsampling), the sampler, cropped, expanded, inverse STFT."""
    n = x.shape[-1]
    y, frames = analyse(x, n_fft=n_fft, hop=hop, alpha=alpha, beta=beta, time_multiple=time_multiple)
    out = sample(score_fn, predict_fn, y, sde, settings, on_step)[..., :frames]
    return spectrum.istft(spectrum.expand(out, alpha, beta), n_fft, hop, n)


def analyse(x: np.ndarray, *, n_fft: int, hop: int, alpha: float, beta: float, time_multiple: int
            ) -> tuple[np.ndarray, int]:
    """(compressed spectrogram [B, F, T'] with frames zero-padded to ``time_multiple``, T): the sampler's
    input; kept apart so the export's fusion fit sees exactly what ``enhance_normalised`` samples from."""
    y = spectrum.compress(spectrum.stft(x, n_fft, hop), alpha, beta)
    frames = y.shape[-1]
    return np.pad(y, ((0, 0), (0, 0), (0, (-frames) % time_multiple))), frames
