"""Training and validation data: manifest pairs, RMS-normalised, randomly cropped, resumable.

Every random choice is a function of (seed, epoch, index): the crop of an item and the order of
an epoch do not depend on how many items were drawn before, so a resumed run that skips the
batches it already trained on sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from effifusion.core.errors import DataError
from effifusion.dsp.audio import SAMPLE_RATE, read_wav
from effifusion.dsp.stft import rms_gain

MANIFEST_COLUMNS = ("utt", "speaker", "clean", "noisy", "noise", "snr_db", "num_samples")


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a prepared manifest with ``clean``/``noisy`` resolved against the manifest's folder.

    Each row: utt, speaker, noise (str), clean, noisy (Path), snr_db (float, NaN when empty),
    num_samples (int). DataError names the manifest and line for a missing file or column, a bad
    number, a duplicate utterance or an audio file that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (run the prepare stage first)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(MANIFEST_COLUMNS)})"
            )
        rows = []
        seen: set[str] = set()
        for line, raw in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            if not raw["utt"]:
                raise DataError(f"{where}: empty utt")
            if raw["utt"] in seen:
                raise DataError(f"{where}: utterance {raw['utt']} listed twice")
            seen.add(raw["utt"])
            try:
                snr = float(raw["snr_db"]) if raw["snr_db"] not in (None, "") else float("nan")
                num_samples = int(raw["num_samples"])
            except (TypeError, ValueError):
                raise DataError(f"{where}: snr_db {raw['snr_db']!r} / num_samples {raw['num_samples']!r} "
                                f"are not numbers") from None
            row = {"utt": raw["utt"], "speaker": raw["speaker"], "noise": raw["noise"], "snr_db": snr,
                   "num_samples": num_samples}
            for key in ("clean", "noisy"):
                if not raw[key]:
                    raise DataError(f"{where}: empty {key} path")
                file = (path.parent / raw[key]).resolve()
                if not file.is_file():
                    raise DataError(f"{where}: {key} file {file} not found")
                row[key] = file
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: manifest lists no utterances")
    return rows


class PairDataset(Dataset):
    """(clean, noisy) pairs at 16 kHz, both scaled by the noisy utterance's RMS gain.

    ``segment_samples`` set (training): items are (clean [N], noisy [N]) float32 crops of that
    length, the same crop for both, zero-padded at the end when the utterance is shorter; the crop
    start depends only on (seed, epoch, index), see ``set_epoch``. ``segment_samples=None``
    (validation, batch 1): whole utterances as (clean, noisy, utt, gain); divide by ``gain`` to get
    the file's level back.

    The gain g = sqrt(N / Σ noisy²) is taken over the whole utterance before cropping, as MP-SENet
    does. ``preload`` reads every file once up front (float32: about 4 GB for the VoiceBank
    training set); otherwise each item is read when drawn.
    """

    def __init__(self, manifest: Path, segment_samples: int | None, seed: int, preload: bool = True):
        if segment_samples is not None and segment_samples < 1:
            raise DataError(
                f"segment length must be >= 1 sample, got {segment_samples} (params.yaml train.segment_s)"
            )
        self.manifest = Path(manifest)
        self.rows = read_manifest(self.manifest)
        self.segment_samples = segment_samples
        self.seed = int(seed)
        self.epoch = 0
        self._cache: list[tuple[np.ndarray, np.ndarray, float]] | None = None
        if preload:
            indices = tqdm(range(len(self.rows)), desc=f"load {self.manifest.name}", unit="pair", leave=False)
            self._cache = [self._load(i) for i in indices]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops are drawn (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        row = self.rows[index]
        clean, _ = read_wav(row["clean"], sample_rate=SAMPLE_RATE)
        noisy, _ = read_wav(row["noisy"], sample_rate=SAMPLE_RATE)
        if len(clean) != len(noisy):
            raise DataError(f"{row['clean']} has {len(clean)} samples but {row['noisy']} has {len(noisy)}")
        if len(noisy) != row["num_samples"]:
            raise DataError(f"{self.manifest}: {row['utt']} has num_samples {row['num_samples']} but "
                            f"{row['noisy']} has {len(noisy)} (stale manifest? rerun prepare)")
        gain = float(rms_gain(torch.from_numpy(noisy))[0])
        return clean, noisy, gain

    def crop_start(self, index: int, length: int) -> int:
        """Start of item ``index``'s crop this epoch (0 when the utterance is not longer than it)."""
        if self.segment_samples is None or length <= self.segment_samples:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        return int(rng.integers(0, length - self.segment_samples + 1))

    def __getitem__(self, index: int) -> tuple:
        clean, noisy, gain = self._cache[index] if self._cache is not None else self._load(index)
        if self.segment_samples is None:
            utt = self.rows[index]["utt"]
            return torch.from_numpy(clean * gain), torch.from_numpy(noisy * gain), utt, gain
        return self.crop(index, clean, noisy, gain)

    def crop(self, index: int, clean: np.ndarray, noisy: np.ndarray, gain: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index``'s crop of this epoch from (clean, noisy), both scaled by ``gain``, zero-padded."""
        seg = self.segment_samples
        start = self.crop_start(index, len(noisy))
        out_clean = np.zeros(seg, dtype=np.float32)
        out_noisy = np.zeros(seg, dtype=np.float32)
        n = min(seg, len(noisy) - start)
        out_clean[:n] = clean[start:start + n] * gain
        out_noisy[:n] = noisy[start:start + n] * gain
        return torch.from_numpy(out_clean), torch.from_numpy(out_noisy)


def spread_over_speakers(rows: list[dict[str, Any]], count: int) -> list[int]:
    """Indices of ``count`` rows taken round-robin over speakers (manifest order within each).

    Why: validation on the first N rows of a manifest sorted by speaker sees one speaker only;
    taking turns gives every held-out speaker the same weight in model selection.
    """
    by_speaker: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_speaker.setdefault(row["speaker"], []).append(i)
    queues = [list(v) for v in by_speaker.values()]
    picked: list[int] = []
    while len(picked) < min(count, len(rows)):
        for q in queues:
            if q and len(picked) < count:
                picked.append(q.pop(0))
    return sorted(picked)


def validation_items(manifest: Path, count: int, seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(utt, clean, noisy) whole utterances, RMS-normalised, ``count`` of them spread over speakers."""
    val_set = PairDataset(manifest, segment_samples=None, seed=seed)
    return [(item[2], item[0], item[1]) for item in (val_set[i] for i in spread_over_speakers(val_set.rows, count))]


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one process, minus the first ``skip`` of them.

    The epoch's order is a permutation seeded by (seed, epoch), the same on every process; process
    ``rank`` of ``world_size`` takes every world_size-th index of it, all shards cut to the same
    length (n // world_size) so the processes step in lockstep (DistributedDataParallel).
    """

    def __init__(self, n: int, shuffle: bool, seed: int, epoch: int = 0, skip: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank {rank} outside world size {world_size}")
        self.n, self.shuffle, self.seed, self.epoch, self.skip = n, shuffle, int(seed), int(epoch), int(skip)
        self.rank, self.world_size = int(rank), int(world_size)

    def order(self) -> np.ndarray:
        """This process's indices of the epoch, before skipping."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        return order[self.rank::self.world_size][: self.n // self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip:].tolist())

    def __len__(self) -> int:
        return max(self.n // self.world_size - self.skip, 0)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    drop_last: bool,
    *,
    epoch: int = 0,
    skip_batches: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader for one epoch: order and crops fixed by (seed, epoch); make a new one per epoch.

    ``skip_batches`` drops this process's first k batches of the epoch (resume mid-epoch) without
    touching their audio: the batches that follow are exactly those an uninterrupted epoch yields,
    and ``len(loader)`` counts only them. With several processes (``rank`` of ``world_size``) each
    gets a disjoint shard of the epoch's order (see EpochSampler). Sets ``dataset.set_epoch(epoch)``
    when the dataset has it.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size} (params.yaml train.batch_size)")
    if skip_batches < 0:
        raise ValueError(f"make_loader: skip_batches must be >= 0, got {skip_batches}")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = EpochSampler(len(dataset), shuffle, seed, epoch=epoch, skip=skip_batches * batch_size,
                           rank=rank, world_size=world_size)
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))  # worker base seeds
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        generator=generator, pin_memory=pin_memory, persistent_workers=False,
    )
