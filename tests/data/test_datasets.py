import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from effifusion.core.errors import AudioError, DataError
from effifusion.data.datasets import MANIFEST_COLUMNS, PairDataset, make_loader, read_manifest
from effifusion.dsp.audio import write_wav

SR = 16000
LENGTHS = [3000, 1200, 2500, 800, 4000, 1800, 2200]  # two shorter than the 1000+ segment used below


def _write_split(root: Path, lengths=LENGTHS, extra_rows=()) -> Path:
    """A prepared split: train/{clean,noisy}/*.wav and train.csv with paths relative to root."""
    rng = np.random.default_rng(0)
    rows = []
    for i, n in enumerate(lengths):
        utt = f"p{226 + i % 2}_{i:03d}"
        tone = 0.3 * np.sin(np.arange(n) * 0.05 * (i + 1))
        clean = (tone + 0.01 * rng.standard_normal(n)).astype(np.float32)
        noisy = (clean + 0.1 * rng.standard_normal(n)).astype(np.float32)
        write_wav(root / "train" / "clean" / f"{utt}.wav", clean, SR)
        write_wav(root / "train" / "noisy" / f"{utt}.wav", noisy, SR)
        rows.append({"utt": utt, "speaker": utt.split("_")[0], "clean": f"train/clean/{utt}.wav",
                     "noisy": f"train/noisy/{utt}.wav", "noise": "babble", "snr_db": "5.0", "num_samples": n})
    rows.extend(extra_rows)
    manifest = root / "train.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture()
def manifest(tmp_path):
    return _write_split(tmp_path)


def test_read_manifest_resolves_relative_paths(manifest):
    rows = read_manifest(manifest)
    assert [r["num_samples"] for r in rows] == LENGTHS
    assert rows[0]["clean"] == (manifest.parent / "train/clean/p226_000.wav").resolve()
    assert rows[0]["clean"].is_file() and rows[0]["noisy"].is_file()
    assert rows[1]["speaker"] == "p227" and rows[0]["snr_db"] == 5.0 and rows[0]["noise"] == "babble"


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="missing.csv: manifest not found"):
        read_manifest(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("utt,clean,noisy\np226_001,a.wav,b.wav\n")
    with pytest.raises(DataError, match=r"bad.csv: missing column\(s\) speaker, noise, snr_db, num_samples"):
        read_manifest(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(MANIFEST_COLUMNS) + "\n")
    with pytest.raises(DataError, match="lists no utterances"):
        read_manifest(empty)
    ghost = {"utt": "p226_999", "speaker": "p226", "clean": "train/clean/nope.wav",
             "noisy": "train/noisy/nope.wav", "noise": "x", "snr_db": "0", "num_samples": 10}
    with pytest.raises(DataError, match=r"line 9: clean file .*nope.wav not found"):
        read_manifest(_write_split(tmp_path / "a", extra_rows=[ghost]))
    dup = dict(ghost, utt="p226_000", clean="train/clean/p226_000.wav", noisy="train/noisy/p226_000.wav")
    with pytest.raises(DataError, match="p226_000 listed twice"):
        read_manifest(_write_split(tmp_path / "b", extra_rows=[dup]))
    nan_len = dict(ghost, utt="p226_998", clean="train/clean/p226_000.wav", noisy="train/noisy/p226_000.wav",
                   num_samples="many")
    with pytest.raises(DataError, match="line 9: .*'many' are not numbers"):
        read_manifest(_write_split(tmp_path / "c", extra_rows=[nan_len]))


def test_dataset_stale_manifest_and_silent_file(tmp_path):
    wrong = {"utt": "p226_990", "speaker": "p226", "clean": "train/clean/p226_000.wav",
             "noisy": "train/noisy/p226_000.wav", "noise": "x", "snr_db": "0", "num_samples": 5}
    with pytest.raises(DataError, match="p226_990 has num_samples 5 but .*has 3000"):
        PairDataset(_write_split(tmp_path / "a", extra_rows=[wrong]), 1000, seed=1)
    root = tmp_path / "b"
    manifest = _write_split(root)
    write_wav(root / "train" / "noisy" / "p226_000.wav", np.zeros(3000, np.float32), SR)
    with pytest.raises(AudioError, match="p226_000.wav: is silent"):
        PairDataset(manifest, 1000, seed=1)


def test_training_items_crop_pad_and_gain(manifest):
    ds = PairDataset(manifest, 1000, seed=7)
    rows = read_manifest(manifest)
    import soundfile as sf

    for i, row in enumerate(rows):
        clean_file, _ = sf.read(row["clean"], dtype="float32")
        noisy_file, _ = sf.read(row["noisy"], dtype="float32")
        gain = np.sqrt(len(noisy_file) / np.sum(noisy_file.astype(np.float64) ** 2))  # whole utterance
        clean, noisy = ds[i]
        assert clean.dtype == torch.float32 and clean.shape == noisy.shape == (1000,)
        start = ds.crop_start(i, len(noisy_file))
        n = min(1000, len(noisy_file) - start)
        window = slice(start, start + n)
        np.testing.assert_allclose(noisy[:n].numpy(), noisy_file[window] * gain, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(clean[:n].numpy(), clean_file[window] * gain, rtol=1e-5, atol=1e-6)
        if len(noisy_file) < 1000:
            assert start == 0 and torch.all(clean[n:] == 0) and torch.all(noisy[n:] == 0)
        else:
            assert 0 <= start <= len(noisy_file) - 1000


def test_crops_deterministic_per_seed_epoch_index(manifest):
    a = PairDataset(manifest, 500, seed=3)
    b = PairDataset(manifest, 500, seed=3, preload=False)
    starts = lambda ds: [ds.crop_start(i, n) for i, n in enumerate(LENGTHS)]  # noqa: E731
    assert starts(a) == starts(b)
    for i in range(len(a)):
        assert all(torch.equal(x, y) for x, y in zip(a[i], b[i]))
    epoch0 = starts(a)
    a.set_epoch(1)
    assert starts(a) != epoch0  # a new epoch, new crops
    a.set_epoch(0)
    assert starts(a) == epoch0
    assert starts(PairDataset(manifest, 500, seed=4)) != epoch0


def test_validation_items_whole_utterances(manifest):
    ds = PairDataset(manifest, None, seed=0)
    clean, noisy, utt, gain = ds[3]
    assert utt == "p227_003" and clean.shape == noisy.shape == (800,)
    assert float(torch.sqrt(torch.mean(noisy.double() ** 2))) == pytest.approx(1.0, rel=1e-5)  # unit RMS
    loader = make_loader(ds, 1, shuffle=False, seed=0, num_workers=0, drop_last=False)
    c, n, u, g = next(iter(loader))
    assert c.shape == (1, 3000) and list(u) == ["p226_000"] and g.shape == (1,)


def _batches(loader):
    return [torch.cat(b).sum().item() for b in loader]


def test_loader_order_deterministic_and_skip_batches(manifest):
    ds = PairDataset(manifest, 600, seed=5)
    full = list(make_loader(ds, 2, True, seed=5, num_workers=0, drop_last=True, epoch=2))
    assert len(full) == 3
    again = list(make_loader(ds, 2, True, seed=5, num_workers=0, drop_last=True, epoch=2))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(full, again))
    other = list(make_loader(ds, 2, True, seed=5, num_workers=0, drop_last=True, epoch=3))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(full, other))
    # A resumed run: a fresh dataset, the epoch's loader with the first batch skipped.
    resumed_ds = PairDataset(manifest, 600, seed=5)
    resumed = make_loader(resumed_ds, 2, True, seed=5, num_workers=0, drop_last=True, epoch=2, skip_batches=1)
    assert len(resumed) == 2
    rest = list(resumed)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(full[1:], rest))
    past_end = make_loader(ds, 2, True, seed=5, num_workers=0, drop_last=False, epoch=2, skip_batches=5)
    assert len(past_end) == 0 and list(past_end) == []


def test_loader_with_worker_processes_matches(manifest):
    ds = PairDataset(manifest, 600, seed=5)
    inline = list(make_loader(ds, 3, True, seed=9, num_workers=0, drop_last=False, epoch=1))
    workers = list(make_loader(ds, 3, True, seed=9, num_workers=2, drop_last=False, epoch=1))
    assert len(inline) == len(workers) == 3
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(inline, workers))


def test_loader_shards_for_several_processes(manifest):
    ds = PairDataset(manifest, 600, seed=5)
    single = make_loader(ds, 1, True, seed=5, num_workers=0, drop_last=True, epoch=1).sampler
    shards = [make_loader(ds, 1, True, seed=5, num_workers=0, drop_last=True, epoch=1, rank=r,
                          world_size=2).sampler for r in range(2)]
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == len(LENGTHS) // 2
    assert not set(a) & set(b) and set(a) | set(b) <= set(single)
    resumed = make_loader(ds, 1, True, seed=5, num_workers=0, drop_last=True, epoch=1, rank=1, world_size=2,
                          skip_batches=2)
    assert list(resumed.sampler) == b[2:]
