"""Mixing speech and noise at an SNR against the ITU-T P.56 active speech level, and stage mix_unseen.

VoiceBank+DEMAND's logged SNRs are relative to the P.56 active level (docs/reference.md §4): a plain
energy SNR counts the pauses of an utterance and so reads 0.4-3 dB low. Every mixture this project
makes (the demo corpus, the unseen-noise test set) uses the same definition:

    SNR = active_speech_level(speech) - 10 log10(mean(noise ** 2))
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import lfilter

from effifusion.core.errors import AudioError, ConfigError, DataError
from effifusion.core.files import atomic_dir, write_json
from effifusion.core.parallel import run_parallel, timing_report
from effifusion.core.settings import MixUnseenConfig, as_settings
from effifusion.dsp.audio import check_audio, read_wav, resample, write_wav

# ITU-T P.56 method B constants.
P56_TIME_CONSTANT_S = 0.03   # envelope smoothing
P56_HANGOVER_S = 0.2         # a sample stays "active" this long after the envelope crossed a threshold
P56_MARGIN_DB = 15.9         # active level sits this far above the threshold that defines activity
# Thresholds: the standard steps them in powers of two (6 dB) from the 16-bit LSB up, then
# interpolates between the two around the margin. A 0.5 dB grid anchored at the envelope's peak
# gives the same definition with less interpolation error, for any float scale, and makes the
# level exactly scale-invariant (level(g * x) = level(x) + 20 log10 g).
P56_THRESHOLD_STEP_DB = 0.5
P56_THRESHOLD_RANGE_DB = 140.0


def active_speech_level(x: np.ndarray, sr: int) -> float:
    """ITU-T P.56 method B active speech level in dB re full-scale power (10 log10 of active power).

    Envelope q = two cascaded one-pole smoothers (time constant 0.03 s) of |x|. For a threshold c,
    a sample is active when q reached c within the last 0.2 s (hangover); the active power A(c) is
    sum(x**2) / (number of active samples). The level is A at the threshold c where
    A(c) [dB] - c [dB] = 15.9 dB, linearly interpolated between grid thresholds.
    Returns -inf for an all-zero signal.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("active_speech_level: empty signal")
    if not np.all(np.isfinite(x)):
        raise ValueError("active_speech_level: signal contains NaN or infinite samples")
    energy = float(np.sum(np.square(x)))  # not np.dot: BLAS threads are slow on a busy machine
    if energy == 0.0:
        return float("-inf")
    g = np.exp(-1.0 / (sr * P56_TIME_CONSTANT_S))
    p = lfilter([1.0 - g], [1.0, -g], np.abs(x))
    q = lfilter([1.0 - g], [1.0, -g], p)
    hang = int(np.ceil(sr * P56_HANGOVER_S))
    # Largest envelope value over the last `hang` samples and this one: active for c iff >= c.
    recent_peak = maximum_filter1d(q, size=hang + 1, origin=hang // 2, mode="constant", cval=0.0)

    # Thresholds on a grid going down from the envelope's peak; count the samples active at each
    # (recent peak >= threshold) with one histogram of "grid steps below the peak" instead of a sort.
    top_db = 20.0 * np.log10(q.max())
    num = int(round(P56_THRESHOLD_RANGE_DB / P56_THRESHOLD_STEP_DB)) + 1
    with np.errstate(divide="ignore"):
        steps_below = (top_db - 20.0 * np.log10(recent_peak)) / P56_THRESHOLD_STEP_DB
    bins = np.ceil(np.clip(steps_below, 0, num)).astype(np.int64)          # num = below every threshold
    active_from_top = np.cumsum(np.bincount(bins, minlength=num + 1)[:num])
    active = active_from_top[::-1]                                          # ascending thresholds
    thresholds_db = top_db - P56_THRESHOLD_STEP_DB * np.arange(num)[::-1]
    with np.errstate(divide="ignore"):
        active_db = 10.0 * np.log10(energy / np.maximum(active, 1))
    delta = active_db - thresholds_db
    # As in the standard, walk up from the lowest threshold to the first one whose margin is <= M.
    if delta[0] <= P56_MARGIN_DB:  # even the lowest threshold is within the margin: all of it is active
        return float(active_db[0])
    below = np.nonzero(delta <= P56_MARGIN_DB)[0]
    if below.size == 0:
        return float(active_db[-1])
    j = int(below[0])
    frac = (delta[j - 1] - P56_MARGIN_DB) / (delta[j - 1] - delta[j])
    return float(active_db[j - 1] + frac * (active_db[j] - active_db[j - 1]))


def power_db(x: np.ndarray) -> float:
    """Mean power in dB re full scale (-inf for all zeros)."""
    x = np.asarray(x, dtype=np.float64)
    power = float(np.mean(x * x))
    return 10.0 * np.log10(power) if power > 0 else float("-inf")


def measured_snr_db(speech: np.ndarray, noise: np.ndarray, sr: int) -> float:
    """SNR as this project defines it: P.56 active level of speech minus the noise power."""
    return active_speech_level(speech, sr) - power_db(noise)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float,
               sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``noise`` so speech's P.56 active level is ``snr_db`` above the noise power; add them.

    ``noise`` must have the length of ``speech`` (cut excerpts with ``noise_excerpt``). Returns
    (mixture, scaled_noise) as float64; no clipping is applied here. Raises ValueError when the
    speech has no active level or the noise is all zeros.
    """
    from audiomentations.core.utils import calculate_desired_noise_rms  # imported lazily: slow import

    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if speech.shape != noise.shape or speech.ndim != 1:
        raise ValueError(f"mix_at_snr: speech {speech.shape} and noise {noise.shape} must be equal-length "
                         f"1-D arrays")
    level_db = active_speech_level(speech, sr)
    if not np.isfinite(level_db):
        raise ValueError("speech is silent: it has no active speech level")
    noise_rms = float(np.sqrt(np.mean(noise * noise)))
    if noise_rms == 0.0:
        raise ValueError("noise excerpt is all zeros")
    # audiomentations' rule (noise RMS = speech RMS / 10^(snr/20)) with the active speech RMS.
    target_rms = calculate_desired_noise_rms(10.0 ** (level_db / 20.0), snr_db)
    scaled = noise * (target_rms / noise_rms)
    return speech + scaled, scaled


def noise_excerpt(noise: np.ndarray, num_samples: int, offset: int) -> np.ndarray:
    """``num_samples`` of ``noise`` from ``offset``, wrapping around (looping) past its end.

    Looping only happens when the noise is shorter than offset + num_samples; offsets drawn by
    ``mix_unseen`` keep excerpts inside the file whenever the file is long enough.
    """
    idx = (offset + np.arange(num_samples)) % noise.shape[0]
    return noise[idx]


def snr_tag(snr_db: float) -> str:
    """Filesystem-safe SNR label: -5 -> 'm5.0', 17.5 -> '17.5', 0 -> '0.0'."""
    return f"{'m' if snr_db < 0 else ''}{abs(float(snr_db)):.1f}"


def item_seed(seed: int, *keys: object) -> np.random.SeedSequence:
    """Seed for one item from the global seed and the item's identity (not from worker order)."""
    digest = hashlib.sha256("|".join(str(k) for k in keys).encode()).digest()
    return np.random.SeedSequence([int(seed), *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


# ---------------------------------------------------------------------------------------------
# Stage mix_unseen: the test utterances mixed with DEMAND noises that VoiceBank never used.

UNSEEN_COLUMNS = [
    "utt", "source_utt", "speaker", "clean", "noisy", "noise", "snr_db", "offset", "num_samples",
]


def mix_unseen(
    prepared_dir: Path, raw_dir: Path, out_dir: Path, cfg: MixUnseenConfig | dict[str, Any], seed: int,
    sample_rate: int = 16000, workers: int = 1,
) -> dict:
    """Mix prepared test utterances with unseen noises at each (noise, SNR) cell; write ``out_dir``.

    ``cfg`` is params.yaml's ``mix_unseen`` section. Each cell gets ``utterances_per_condition`` distinct test
    utterances, chosen so every utterance is used about equally; the noise excerpt's offset is
    drawn from a seed derived from (seed, utterance, noise, SNR), so re-runs give identical files
    whatever the worker count. A noise file shorter than an utterance is looped. Writes
    ``noisy/*.wav``, ``unseen.csv``, ``log_unseen.txt`` and ``report.json`` (settings and results
    only, no timings) into a temporary folder renamed into place; returns the report plus ``timing``.
    """
    start = time.perf_counter()
    prepared_dir, raw_dir, out_dir = Path(prepared_dir), Path(raw_dir), Path(out_dir)
    cfg = as_settings(cfg, MixUnseenConfig)
    noises, snrs, per_cell, channel = list(cfg.noises), list(cfg.snrs_db), cfg.utterances_per_condition, cfg.channel

    test_rows = _read_test_manifest(prepared_dir / "test.csv")
    if per_cell > len(test_rows):
        raise ConfigError(f"params.yaml: mix_unseen.utterances_per_condition={per_cell} exceeds the "
                          f"{len(test_rows)} test utterances in {prepared_dir / 'test.csv'}")
    noise_paths = {env: raw_dir / "demand" / env / f"{channel}.wav" for env in noises}
    for env, path in noise_paths.items():
        if not path.is_file():
            raise DataError(f"{path}: noise file for mix_unseen.noises entry {env!r} not found "
                            f"(expected <raw>/demand/<ENV>/{channel}.wav)")

    _NOISE_CACHE.clear()  # in-process runs: never reuse a noise file read by an earlier call
    items = _plan_items(test_rows, noises, snrs, per_cell, seed, prepared_dir, out_dir, noise_paths,
                        sample_rate)
    with atomic_dir(out_dir) as tmp:
        (tmp / "noisy").mkdir()
        results = run_parallel(_mix_item, [dict(it, out_root=str(tmp)) for it in items], workers,
                                desc="mix_unseen", unit="file")
        results.sort(key=lambda r: r["utt"])
        _write_outputs(tmp, results)
        seconds = time.perf_counter() - start
        report = _unseen_report(results, noises, snrs, test_rows, noise_paths, seed, sample_rate)
        write_json(tmp / "report.json", report)
    return {**report, "timing": timing_report(workers, seconds, len(results))}




def _read_test_manifest(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: test manifest not found (run the prepare stage first)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"utt", "speaker", "clean"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: missing columns {', '.join(sorted(missing))}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path}: has no utterances")
    return sorted(rows, key=lambda r: r["utt"])


def _plan_items(test_rows, noises, snrs, per_cell, seed, prepared_dir, out_dir, noise_paths, sample_rate):
    """One item per (noise, SNR, utterance): balanced choice of utterances, seeded per cell."""
    uses = {r["utt"]: 0 for r in test_rows}
    by_utt = {r["utt"]: r for r in test_rows}
    items = []
    for env in noises:
        for snr in snrs:
            rng = np.random.default_rng(item_seed(seed, "cell", env, snr))
            tie_break = rng.permutation(len(test_rows))
            order = sorted(range(len(test_rows)), key=lambda i: (uses[test_rows[i]["utt"]], tie_break[i]))
            for i in sorted(order[:per_cell]):
                src = test_rows[i]["utt"]
                uses[src] += 1
                clean_abs = prepared_dir / by_utt[src]["clean"]
                items.append({
                    "utt": f"{src}_{env}_{snr_tag(snr)}",
                    "source_utt": src,
                    "speaker": by_utt[src]["speaker"],
                    "clean_path": str(clean_abs),
                    "clean_rel": Path(os.path.relpath(clean_abs.resolve(), out_dir.resolve())).as_posix(),
                    "noise": env,
                    "noise_path": str(noise_paths[env]),
                    "snr_db": snr,
                    "seed": seed,
                    "sample_rate": sample_rate,
                })
    return items


_NOISE_CACHE: dict[tuple[str, int], np.ndarray] = {}  # per process: workers read each noise file once


def _load_noise(path: str, sample_rate: int) -> np.ndarray:
    """A noise file at ``sample_rate`` (cached per process: workers reuse it across items)."""
    key = (path, sample_rate)
    if key not in _NOISE_CACHE:
        audio, sr = read_wav(path)
        _NOISE_CACHE[key] = resample(audio, sr, sample_rate).astype(np.float64)
    return _NOISE_CACHE[key]


def _mix_item(item: dict) -> dict:
    sr = item["sample_rate"]
    speech, _ = read_wav(item["clean_path"], sample_rate=sr)
    noise = _load_noise(item["noise_path"], sr)
    n = speech.shape[0]
    rng = np.random.default_rng(item_seed(item["seed"], item["source_utt"], item["noise"], item["snr_db"]))
    offset = int(rng.integers(0, max(1, noise.shape[0] - n + 1))) if noise.shape[0] >= n \
        else int(rng.integers(0, noise.shape[0]))
    excerpt = noise_excerpt(noise, n, offset)
    try:
        mixture, _ = mix_at_snr(speech, excerpt, item["snr_db"], sr)
    except ValueError as exc:
        source = item["clean_path"] if "speech" in str(exc) else f"{item['noise_path']} at offset {offset}"
        raise AudioError(f"{source}: {exc}") from None
    check_audio(mixture, item["utt"])
    clipped = int(np.count_nonzero(np.abs(mixture) > 1.0))
    noisy_rel = f"noisy/{item['utt']}.wav"
    noisy_path = Path(item["out_root"]) / noisy_rel
    write_wav(noisy_path, mixture, sr)
    written, _ = read_wav(noisy_path, sample_rate=sr)  # measure what the file holds (quantised, clipped)
    measured = measured_snr_db(speech, written.astype(np.float64) - speech, sr)
    return {
        "utt": item["utt"], "source_utt": item["source_utt"], "speaker": item["speaker"],
        "clean": item["clean_rel"], "noisy": noisy_rel, "noise": item["noise"], "snr_db": item["snr_db"],
        "offset": offset, "num_samples": n, "looped": noise.shape[0] < n, "clipped_samples": clipped,
        "measured_snr_db": measured,
    }


def _write_outputs(root: Path, results: list[dict]) -> None:
    with (root / "unseen.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=UNSEEN_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in results:
            writer.writerow({**r, "snr_db": f"{r['snr_db']:g}"})
    lines = [f"{r['utt']} {r['noise']} {r['snr_db']:g} {r['offset']}\n" for r in results]
    (root / "log_unseen.txt").write_text("".join(lines))


def _unseen_report(results, noises, snrs, test_rows, noise_paths, seed, sample_rate) -> dict:
    errors = np.array([r["measured_snr_db"] - r["snr_db"] for r in results])
    uses = {r["utt"]: 0 for r in test_rows}
    for r in results:
        uses[r["source_utt"]] += 1
    by_snr = {}
    for snr in snrs:
        vals = [r["measured_snr_db"] for r in results if r["snr_db"] == snr]
        by_snr[f"{snr:g}"] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)),
                              "max": float(np.max(vals))}
    return {
        "counts": {"files": len(results), "noises": len(noises), "snrs": len(snrs),
                   "test_utterances": len(test_rows),
                   "uses_per_utterance": {"min": min(uses.values()), "max": max(uses.values())}},
        "noise_files": {env: str(p) for env, p in noise_paths.items()},
        "seed": seed,
        "sample_rate": sample_rate,
        "snr_definition": "P.56 active speech level (method B) minus noise power, measured on the "
                          "written files",
        "measured_snr_db": {
            "by_target": by_snr,
            "error_mean_db": float(errors.mean()),
            "error_max_abs_db": float(np.abs(errors).max()),
        },
        "looped_noise_files": sum(r["looped"] for r in results),
        "clipped_files": sum(r["clipped_samples"] > 0 for r in results),
    }
