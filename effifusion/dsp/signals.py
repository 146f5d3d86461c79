"""A deterministic speech-like test signal (export parity, benchmarks): numpy only, no torch."""

from __future__ import annotations

import numpy as np


def parity_signal(n_samples: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Deterministic speech-band test input: harmonic tones under a syllable-rate envelope plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / sample_rate
    tone = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h
               for f0 in (140.0, 215.0) for h in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    x = 0.05 * envelope * tone + 0.02 * rng.standard_normal(n_samples)
    return x.astype(np.float32)
