"""Dynamic mixing: new training pairs every epoch from the training set's own speech and noise.

Why: a small corpus (the demo's 40 pairs, or any single VoiceBank epoch) fixes which noise sits
under which utterance at which SNR; remixing them gives the model new pairs every epoch for free.
The noise pool is exactly ``noisy - clean`` of each training pair (VoiceBank+DEMAND and the demo
corpus are both additive mixtures), so no noise outside the training set is ever seen.

For each item, with probability ``prob``: the clean utterance gets a noise excerpt from another
(random) pair, at a random offset, optionally coloured by an audiomentations filter, mixed at an
SNR drawn uniformly from ``snr_db`` against the P.56 active speech level of the whole utterance
(the project's mixer, as VoiceBank defines its SNRs); then the usual random crop. Every choice is
a function of (seed, epoch, index), so a resumed run sees exactly the pairs an uninterrupted run
would have seen, whatever the order items are drawn in.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from effifusion.core.settings import AugmentConfig, as_settings
from effifusion.data.mixing import mix_at_snr, noise_excerpt
from effifusion.dsp.stft import rms_gain


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global RNGs (audiomentations draws from them), then restore them.

    Makes a transform's random parameters a function of ``seed`` without disturbing the training
    loop's own random state (which the resume checkpoint saves).
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def noise_filter():
    """One audiomentations filter per use, chosen at random: colours a noise excerpt into a new noise."""
    from audiomentations import BandPassFilter, HighPassFilter, LowPassFilter, OneOf  # slow import

    return OneOf([
        LowPassFilter(min_cutoff_freq=500.0, max_cutoff_freq=6000.0, p=1.0),
        HighPassFilter(min_cutoff_freq=100.0, max_cutoff_freq=2000.0, p=1.0),
        BandPassFilter(min_center_freq=300.0, max_center_freq=4000.0, min_bandwidth_fraction=0.5,
                       max_bandwidth_fraction=1.99, p=1.0),
    ], p=1.0)


class DynamicMixDataset(Dataset):
    """Training crops like ``PairDataset``'s, remixed every epoch (see the module docstring).

    ``base`` must preload its audio (the noise pool is built from it once). Items are
    (clean [N], noisy [N]) float32 crops scaled by the remixed noisy signal's RMS gain.
    """

    def __init__(self, base: Any, cfg: AugmentConfig | dict[str, Any], sample_rate: int):
        if base.segment_samples is None or base._cache is None:
            raise ValueError("DynamicMixDataset needs a preloaded training PairDataset (segment_samples set)")
        self.base = base
        self.cfg = as_settings(cfg, AugmentConfig)  # train.augment (a mapping is checked like params.yaml's)
        self.sample_rate = sample_rate
        # noise j is computed when drawn (noisy - clean): a stored copy would double the memory
        self.usable = np.array([np.any(n != c) for c, n, _ in base._cache])
        self._filter = noise_filter() if self.cfg.filter_prob > 0 else None

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def noise(self, j: int) -> np.ndarray:
        """The noise of training pair ``j``: exactly its noisy minus clean signal."""
        clean, noisy, _ = self.base._cache[j]
        return noisy.astype(np.float64) - clean.astype(np.float64)

    def remix(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        """(clean, noisy) whole utterances remixed for this (seed, epoch, index), or None to keep the pair."""
        rng = np.random.default_rng([self.base.seed, self.base.epoch, index, 3])
        if rng.random() >= self.cfg.prob or not self.usable.any():
            return None
        clean = self.base._cache[index][0].astype(np.float64)
        candidates = np.flatnonzero(self.usable)
        j = int(candidates[rng.integers(len(candidates))])
        noise = self.noise(j)
        excerpt = noise_excerpt(noise, len(clean), int(rng.integers(len(noise))))
        filtered = False
        if self._filter is not None and rng.random() < self.cfg.filter_prob:
            with seeded_global_rngs(int(rng.integers(2**31))):
                out = self._filter(excerpt.astype(np.float32), self.sample_rate).astype(np.float64)
            if np.all(np.isfinite(out)) and np.any(out != 0):
                excerpt, filtered = out, True
        lo, hi = self.cfg.snr_db
        snr = float(rng.uniform(lo, hi))
        try:
            noisy, _ = mix_at_snr(clean, excerpt, snr, self.sample_rate)
        except ValueError:  # silent speech or an all-zero excerpt: keep the original pair
            return None
        return clean, noisy, {"noise_from": j, "snr_db": snr, "filtered": filtered}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = self.remix(index)
        if mixed is None:
            return self.base[index]
        clean, noisy, _ = mixed
        gain = float(rms_gain(torch.from_numpy(noisy))[0])
        return self.base.crop(index, clean.astype(np.float32), noisy.astype(np.float32), gain)
