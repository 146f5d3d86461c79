"""Stage prepare: VoiceBank-layout raw corpus -> checked 16 kHz train/val/test pairs with manifests.

Every pair is validated (readable, mono, same rate and length, finite, not silent) before it is
resampled with the project's one resampler; a bad pair stops the stage with the file and the
problem named, or, with ``skip_bad_files``, is listed in report.json. Nothing is dropped silently.
Validation speakers are split out of the training set (never the test set, docs/reference.md §4).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np

from effifusion.core.errors import AudioError, ConfigError, DataError, EffiFusionError
from effifusion.core.files import atomic_dir, write_json
from effifusion.core.parallel import run_parallel, timing_report
from effifusion.core.settings import PrepareConfig, as_settings
from effifusion.dsp.audio import RESAMPLING, check_audio, read_wav, resample, write_wav

# split name -> (clean folder, noisy folder, log file) inside the raw corpus
RAW_SPLITS = {
    "train": ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav", "log_trainset_28spk.txt"),
    "test": ("clean_testset_wav", "noisy_testset_wav", "log_testset.txt"),
}
MANIFEST_COLUMNS = ["utt", "speaker", "clean", "noisy", "noise", "snr_db", "num_samples"]


def read_noise_log(path: Path) -> dict[str, tuple[str, float]]:
    """VoiceBank noise log (lines ``<utt> <noise_label> <snr>``) -> {utt: (label, snr_db)}.

    Raises DataError naming the file and line for a missing file, a malformed line, an SNR that is
    not a number or an utterance listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: noise log not found (the download stage writes it)")
    entries: dict[str, tuple[str, float]] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3:
            raise DataError(f"{path}:{number}: expected '<utt> <noise_label> <snr>', got {line.strip()!r}")
        utt, label, snr = fields
        try:
            snr_db = float(snr)
        except ValueError:
            raise DataError(f"{path}:{number}: SNR {snr!r} is not a number") from None
        if not np.isfinite(snr_db) or "_" not in utt:
            raise DataError(f"{path}:{number}: expected an utterance id like p226_001 and a finite SNR, "
                            f"got {line.strip()!r}")
        if utt in entries:
            raise DataError(f"{path}:{number}: {utt} already listed on line {first_line[utt]}")
        entries[utt], first_line[utt] = (label, snr_db), number
    if not entries:
        raise DataError(f"{path}: noise log is empty")
    return entries


def prepare_corpus(raw_dir: Path, out_dir: Path, cfg: PrepareConfig | dict[str, Any], sample_rate: int = 16000,
                   workers: int = 1) -> dict:
    """Check, resample and split the raw corpus into ``out_dir``; write report.json, return it with timings.

    ``cfg`` is params.yaml's ``prepare`` section (val_speakers, skip_bad_files); ``workers`` processes do the
    work. Output per the layout contract: ``{train,val,test}/{clean,noisy}/<utt>.wav`` at ``sample_rate``, manifests
    ``{train,val,test}.csv`` with paths relative to ``out_dir``, and ``report.json``. Built in a
    temporary folder and renamed into place. report.json is a function of the raw files and the
    settings only (a rerun writes the same bytes, so later stages stay up to date); the returned
    copy adds ``timing`` (workers, seconds, files/s) for the stage's metrics file.
    """
    start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    cfg = as_settings(cfg, PrepareConfig)
    val_speakers, skip_bad = list(cfg.val_speakers), cfg.skip_bad_files
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw corpus folder not found (run the download stage first)")
    pairs, bad = _find_pairs(raw_dir)
    _check_val_speakers(val_speakers, pairs, bad)
    if bad and not skip_bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more bad pairs)" if len(bad) > 1 else ""
        raise DataError(f"{first['message']}{more}; set prepare.skip_bad_files: true to list bad pairs in "
                        f"report.json and go on")

    with atomic_dir(out_dir) as tmp:
        items = []
        for p in pairs:
            split = "val" if p["split"] == "train" and p["speaker"] in val_speakers else p["split"]
            items.append({**p, "split": split, "out_root": str(tmp), "sample_rate": sample_rate,
                          "skip_bad": skip_bad})
        results = run_parallel(_prepare_pair, items, workers, desc="prepare", unit="pair")
        rows = sorted((r for r in results if "bad" not in r), key=lambda r: r["utt"])
        bad += sorted((r["bad"] for r in results if "bad" in r), key=lambda b: (b["split"], b["utt"]))
        counts = {}
        for split in ("train", "val", "test"):
            split_rows = [r for r in rows if r["split"] == split]
            if not split_rows:
                skipped = ", ".join(b["utt"] for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
                raise DataError(f"{raw_dir}: no usable pairs left for the {split} split "
                                f"({len(bad)} bad pairs skipped: {skipped or 'none'})")
            _write_manifest(tmp / f"{split}.csv", split_rows)
            counts[split] = len(split_rows)
        seconds = time.perf_counter() - start
        files = 2 * len(rows)
        report = {
            "counts": counts,
            "speakers": {s: sorted({r["speaker"] for r in rows if r["split"] == s})
                         for s in ("train", "val", "test")},
            "sample_rate": sample_rate,
            "source_sample_rates": sorted({r["source_sample_rate"] for r in rows}),
            "resampling": RESAMPLING,
            "hours": {s: round(sum(r["num_samples"] for r in rows if r["split"] == s) / sample_rate / 3600, 4)
                      for s in ("train", "val", "test")},
            "bad_pairs": bad,
            "skipped": len(bad),
            "skip_bad_files": skip_bad,
        }
        write_json(tmp / "report.json", report)
    return {**report, "timing": timing_report(workers, seconds, files)}


def _wav_files(folder: Path) -> dict[str, Path]:
    """{utt: path} of the WAVs in ``folder`` (macOS '._*' resource forks are not audio: ignored)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (the download stage writes it)")
    return {p.stem: p for p in sorted(folder.glob("*.wav")) if not p.name.startswith(".")}


def _find_pairs(raw_dir: Path) -> tuple[list[dict], list[dict]]:
    """Pair clean and noisy files with their log entries; a missing counterpart makes a bad pair."""
    pairs, bad = [], []
    for split, (clean_name, noisy_name, log_name) in RAW_SPLITS.items():
        log_path = raw_dir / "logfiles" / log_name
        log = read_noise_log(log_path)
        clean, noisy = _wav_files(raw_dir / clean_name), _wav_files(raw_dir / noisy_name)
        for utt in sorted(set(clean) | set(noisy) | set(log)):
            expected = ((f"clean file {raw_dir / clean_name / (utt + '.wav')}", utt in clean),
                        (f"noisy file {raw_dir / noisy_name / (utt + '.wav')}", utt in noisy),
                        (f"entry in {log_path}", utt in log))
            missing = [what for what, present in expected if not present]
            if missing:
                bad.append({"split": split, "utt": utt, "error": "DataError",
                            "message": f"{utt}: no {' and no '.join(missing)}"})
                continue
            pairs.append({"split": split, "utt": utt, "speaker": utt.split("_")[0],
                          "clean_src": str(clean[utt]), "noisy_src": str(noisy[utt]),
                          "noise": log[utt][0], "snr_db": log[utt][1]})
    return pairs, bad


def _check_val_speakers(val_speakers: list[str], pairs: list[dict], bad: list[dict]) -> None:
    speakers = {s: {p["utt"].split("_")[0] for p in pairs + bad if p["split"] == s} for s in RAW_SPLITS}
    for spk in val_speakers:
        if spk in speakers["test"]:
            raise ConfigError(f"params.yaml: prepare.val_speakers has {spk}, a test-set speaker: validation "
                              f"must not see the test set")
        if spk not in speakers["train"]:
            raise ConfigError(f"params.yaml: prepare.val_speakers has {spk}, which is not a training speaker "
                              f"(training speakers: {', '.join(sorted(speakers['train']))})")
    if speakers["train"] and speakers["train"] <= set(val_speakers):
        raise ConfigError("params.yaml: prepare.val_speakers holds every training speaker: nothing left to "
                          "train on")


def _prepare_pair(item: dict) -> dict:
    """Validate one pair, resample it and write it; a bad pair raises, or is reported when skipping."""
    try:
        return _convert_pair(item)
    except EffiFusionError as exc:
        if not item["skip_bad"]:
            raise
        return {"bad": {"split": item["split"], "utt": item["utt"], "error": type(exc).__name__,
                        "message": str(exc)}}


def _convert_pair(item: dict) -> dict:
    clean, clean_sr = read_wav(item["clean_src"])
    noisy, noisy_sr = read_wav(item["noisy_src"])
    if clean_sr != noisy_sr:
        raise AudioError(f"{item['noisy_src']}: sample rate {noisy_sr} Hz differs from its clean file's "
                         f"{clean_sr} Hz ({item['clean_src']})")
    if clean.shape[0] != noisy.shape[0]:
        raise AudioError(f"{item['noisy_src']}: has {noisy.shape[0]} samples, its clean file "
                         f"{item['clean_src']} has {clean.shape[0]}")
    sr = item["sample_rate"]
    split, utt = item["split"], item["utt"]
    row = {"utt": utt, "speaker": item["speaker"], "noise": item["noise"], "snr_db": item["snr_db"],
           "split": split, "source_sample_rate": clean_sr}
    for kind, audio, src in (("clean", clean, item["clean_src"]), ("noisy", noisy, item["noisy_src"])):
        converted = resample(audio, clean_sr, sr)
        check_audio(converted, f"{src} (resampled to {sr} Hz)")
        rel = f"{split}/{kind}/{utt}.wav"
        write_wav(Path(item["out_root"]) / rel, converted, sr)
        row[kind] = rel
        row["num_samples"] = int(converted.shape[0])
    return row


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "snr_db": f"{r['snr_db']:g}"})
