"""Dynamic mixing: deterministic from (seed, epoch, index), exact on resume, at the requested SNR."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy.signal import correlate

from effifusion.core.config import read_params
from effifusion.core.errors import ConfigError
from effifusion.core.settings import AugmentConfig, parse_section
from effifusion.data.augment import DynamicMixDataset, seeded_global_rngs
from effifusion.data.datasets import PairDataset, make_loader
from effifusion.data.mixing import measured_snr_db
from helpers import make_prepared, tiny_params

CFG = {"enabled": True, "prob": 1.0, "snr_db": [-5.0, 20.0], "filter_prob": 0.5}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("prepared"), n_train=8)


def dataset(prepared, cfg=CFG, seed=7):
    return DynamicMixDataset(PairDataset(prepared / "train.csv", 8000, seed=seed), cfg, 16000)


def test_same_seed_same_pairs_and_new_pairs_every_epoch(prepared):
    a, b = dataset(prepared), dataset(prepared)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            for x, y in zip(a[i], b[i]):
                assert torch.equal(x, y)
    a.set_epoch(0)
    first = [a[i][1] for i in range(len(a))]
    a.set_epoch(1)
    second = [a[i][1] for i in range(len(a))]
    assert not any(torch.equal(x, y) for x, y in zip(first, second))
    # another seed, other pairs
    c = dataset(prepared, seed=8)
    c.set_epoch(1)
    assert not torch.equal(c[0][1], second[0])


def test_items_do_not_depend_on_draw_order(prepared):
    ds = dataset(prepared)
    ds.set_epoch(3)
    forward = [ds[i] for i in range(len(ds))]
    backward = [ds[i] for i in reversed(range(len(ds)))][::-1]
    for (c1, n1), (c2, n2) in zip(forward, backward):
        assert torch.equal(c1, c2) and torch.equal(n1, n2)


def test_resume_mid_epoch_sees_the_same_batches(prepared):
    ds = dataset(prepared)
    full = list(make_loader(ds, 2, shuffle=True, seed=7, num_workers=0, drop_last=True, epoch=2))
    resumed = list(make_loader(dataset(prepared), 2, shuffle=True, seed=7, num_workers=0, drop_last=True,
                               epoch=2, skip_batches=1))
    assert len(resumed) == len(full) - 1
    for (c1, n1), (c2, n2) in zip(full[1:], resumed):
        assert torch.equal(c1, c2) and torch.equal(n1, n2)


def test_remix_hits_the_requested_snr_with_another_pairs_noise(prepared):
    ds = dataset(prepared, cfg={**CFG, "filter_prob": 0.0})
    seen_other = False
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            clean, noisy, info = ds.remix(i)
            assert -5.0 <= info["snr_db"] <= 20.0
            assert measured_snr_db(clean, noisy - clean, 16000) == pytest.approx(info["snr_db"], abs=1e-6)
            seen_other |= info["noise_from"] != i
            # the added noise is pair noise_from's noise (noisy - clean), from some offset, scaled
            pool = ds.noise(info["noise_from"])
            added = noisy - clean
            tiled = np.tile(pool, len(added) // len(pool) + 2)
            corr = correlate(tiled, added, mode="valid", method="fft")[: len(pool)]
            o = int(np.argmax(corr))
            excerpt = tiled[o:o + len(added)]
            assert corr[o] / (np.linalg.norm(excerpt) * np.linalg.norm(added)) == pytest.approx(1.0, abs=1e-6)
    assert seen_other


def test_filtered_noise_is_still_mixed_at_the_snr(prepared):
    ds = dataset(prepared, cfg={**CFG, "filter_prob": 1.0})
    ds.set_epoch(0)
    for i in range(len(ds)):
        clean, noisy, info = ds.remix(i)
        assert info["filtered"]
        assert measured_snr_db(clean, noisy - clean, 16000) == pytest.approx(info["snr_db"], abs=1e-6)


def test_prob_zero_keeps_the_original_pairs(prepared):
    base = PairDataset(prepared / "train.csv", 8000, seed=7)
    ds = dataset(prepared, cfg={**CFG, "prob": 0.0})
    for i in range(len(ds)):
        for x, y in zip(ds[i], base[i]):
            assert torch.equal(x, y)


def test_audiomentations_rng_is_seeded_and_restored():
    random.seed(1)
    np.random.seed(1)
    expect_py, expect_np = random.random(), np.random.random()
    random.seed(1)
    np.random.seed(1)
    with seeded_global_rngs(99):
        inside = (random.random(), np.random.random())
    with seeded_global_rngs(99):
        assert (random.random(), np.random.random()) == inside
    assert (random.random(), np.random.random()) == (expect_py, expect_np)


@pytest.mark.parametrize("bad, where", [
    ({**CFG, "prob": 1.5}, "prob"),
    ({**CFG, "snr_db": [10, 0]}, "snr_db"),
    ({**CFG, "enabled": "yes"}, "enabled"),
    ({**CFG, "extra": 1}, "extra"),
    ({k: v for k, v in CFG.items() if k != "filter_prob"}, "filter_prob"),
])
def test_bad_settings_name_the_key(bad, where, prepared):
    with pytest.raises(ConfigError, match=rf"train\.augment\.{where}"):
        parse_section(AugmentConfig, bad)
    with pytest.raises(ConfigError, match=rf"train\.augment\.{where}"):  # the dataset checks a mapping the same way
        dataset(prepared, cfg=bad)


def test_presets_have_a_valid_augment_section():
    for preset in ("demo", "paper"):
        params = tiny_params() if preset == "demo" else None
        if params is not None:
            parse_section(AugmentConfig, params["train"]["augment"])

    from helpers import ROOT

    paper = read_params(ROOT / "presets" / "paper.yaml")
    assert parse_section(AugmentConfig, paper["train"]["augment"]).enabled is False  # fidelity to the recipe
