"""Stage `evaluate`: the pruned generator and its ONNX export on the test set and on unseen noises.

Every noisy file of ``data/prepared/test.csv`` (VoiceBank test noises) and ``data/unseen/unseen.csv``
(DEMAND environments VoiceBank never used) is enhanced by both models in worker processes, written
as 16-bit WAV under ``data/enhanced/{pytorch,onnx}/{test,unseen}/`` (kept for listening, outside the
DVC output because it is as big as the test set) and scored against its clean reference together
with the noisy input. The metrics JSON holds the means a paper's results table reports, the gains
over the noisy input, the ONNX-vs-PyTorch differences and single-thread real-time factors; the
report folder holds per-utterance and per-condition tables, SNR plots and spectrograms.

The metrics are effifusion.metrics.quality.METRICS: wide-band PESQ, CSIG, CBAK, COVL, SSNR, STOI,
and the ESTOI and SI-SDR (dB) that diffusion-model papers report next to PESQ, with SI-SDR's split
into SI-SIR and SI-SAR (dB; the interference is each utterance's noisy input minus its clean one).

Each utterance is enhanced whole, with one RMS normalisation, as MP-SENet's inference script and
the papers' tables do (PROTOCOL; recorded in the metrics and the summary). Validation during
training does the same, so validation and test scores are computed alike. Attention runs in memory
linear in length (models/attention.py), so no test file needs cutting.

CSIG, CBAK and COVL are in the MATLAB convention (Loizou's compute_metrics) under their plain names;
the same measures as the CMGAN/MP-SENet evaluation scripts compute them (the convention of
published VoiceBank+DEMAND tables, about 0.08-0.09 higher) sit beside them as ``csig_published``,
``cbak_published`` and ``covl_published`` (effifusion.metrics.quality, "published" convention).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from effifusion.core import files
from effifusion.core.errors import AudioError, DataError
from effifusion.core.files import atomic_dir
from effifusion.core.parallel import single_thread_worker
from effifusion.core.settings import Params, PruneConfig, as_settings
from effifusion.data.datasets import read_manifest
from effifusion.dsp.audio import SAMPLE_RATE, check_audio, read_wav, write_wav
from effifusion.metrics.quality import COMPOSITES, CONVENTION_NOTES, METRICS, score_files
from effifusion.tracking import figures
from effifusion.tracking.names import BENCH, RTF, in_section

SETS = ("test", "unseen")
SYSTEMS = ("noisy", "pytorch", "onnx")  # "noisy" = the unprocessed input, the baseline row
ENHANCED_SYSTEMS = ("pytorch", "onnx")
PUBLISHED = "published"
PUBLISHED_METRICS = tuple(f"{m}_{PUBLISHED}" for m in COMPOSITES)  # csig_published, ...
ALL_METRICS = (*METRICS, *PUBLISHED_METRICS)
METRIC_LABELS = {m: m.upper().replace("_", "-") for m in METRICS}  # PESQ, ..., SI-SDR, SI-SIR, SI-SAR
DB_METRICS = ("ssnr", "si_sdr", "si_sir", "si_sar")  # in dB; the rest: PESQ/composites MOS-like, (E)STOI 0-1
THREE_DECIMALS = ("stoi", "estoi")  # in [0, 1]: shown with 3 decimals, the others with 2
SNR_PLOT_METRICS = ("pesq", "stoi", "estoi", "si_sdr", "si_sir", "si_sar")  # one <set>_<metric>_by_snr.png
PUBLISHED_LABELS = {f"{m}_{PUBLISHED}": m.upper() for m in COMPOSITES}
CONVENTIONS_NOTE = {  # evaluate.json's "conventions": which numbers follow which composite convention
    "csig/cbak/covl": CONVENTION_NOTES["matlab"],
    "*_published": CONVENTION_NOTES[PUBLISHED],
}
MATLAB_CAPTION = ("CSIG, CBAK, COVL: MATLAB convention (Loizou's compute_metrics; what the Python port "
                  "gives on int16-scale samples).")
PUBLISHED_CAPTION = ("CSIG, CBAK, COVL: published convention (the CMGAN/MP-SENet Python port on float "
                     "samples, as their evaluation scripts call it; compare these with papers' tables).")
UNITS_NOTE = ("PESQ is wide-band (up to 4.64); CSIG, CBAK, COVL on a 1-5 scale; STOI and ESTOI in [0, 1]; "
              "SSNR, SI-SDR, SI-SIR and SI-SAR in dB (SI-SDR scale-invariant, Le Roux et al. 2019; "
              "SI-SIR and SI-SAR its residual split into noise left and artefacts, against noisy − clean).")
SYSTEM_LABELS = {"noisy": "noisy", "pytorch": "PyTorch", "onnx": "ONNX"}
SET_TITLES = {"test": "Test set (VoiceBank+DEMAND test noises)", "unseen": "Unseen DEMAND noises"}
RTF_REPEATS = 3  # timed runs after one warm-up; the median is reported
TIMING_KEYS = ("rtf", "seconds", "bench")  # measured speed: in metrics/evaluate.json and MLflow, not in reports/
PROTOCOL = "whole utterance, one RMS normalisation per utterance (as MP-SENet's inference)"
VARIANTS = ("dense", "pruned")
BENCH_SECONDS, BENCH_THREADS = 2.0, 1  # the cost measurement of each export (effifusion bench --model)
BENCH_LOGGED = ("rtf", "peak_rss_mib", "gmac_per_s_audio", "params_nonzero")  # bench/<key> in MLflow


def evaluate(
    params: Params | dict[str, Any],
    *,
    prepared_dir: Path,
    unseen_dir: Path,
    torch_model: Path,
    onnx_model: Path,
    out_dir: Path,
    metrics_path: Path,
    enhanced_dir: Path,
    variant: str = "pruned",
    track: bool = True,
    bench: bool = True,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Enhance, score and report both sets with one variant's two models (its checkpoint and its ONNX
    export); return the metrics written to ``metrics_path``.

    ``variant`` (dense | pruned) labels the result. ``bench`` measures the export's cost in a fresh process
    (effifusion bench --model: RTF, peak memory, MACs, non-zero parameters). ``track`` logs the metrics and
    the report files (under ``evaluation/``) into the MLflow run that wrote ``torch_model`` (found by the
    checkpoint's md5: the train run for dense, the prune run for pruned). ``precision`` (export.precision):
    when not fp32, the reduced-precision export beside ``onnx_model`` (``pruned.int8.onnx``) is scored too,
    against the fp32 export's scores (``metrics["precision"]``, ``score_precision``). DataError names a missing
    manifest or model and the stage that produces it; ConfigError a bad setting (``params`` may be the
    checked-and-typed Params or params.yaml's mapping, checked here).
    """
    start = time.perf_counter()
    params = as_settings(params)
    cfg, sr = params.evaluate, params.audio.sample_rate  # the schema holds it at wide-band PESQ's 16 kHz
    device, workers = params.runtime.evaluate_device, params.runtime.evaluate_workers
    torch_model, onnx_model = Path(torch_model), Path(onnx_model)
    _require_file(torch_model, f"{variant} model checkpoint", "train" if variant == "dense" else "prune")
    _require_file(onnx_model, "ONNX model", "export")
    if track:  # fail now, not after the work, if the tracking store cannot be reached
        from effifusion.tracking.runs import setup

        setup(params.mlflow.experiment)
    items = load_items(Path(prepared_dir), Path(unseen_dir))
    enhanced_dir, out_dir = Path(enhanced_dir), Path(out_dir)

    # ONNX Runtime runs on the CPU here (effifusion.inference.backends); runtime.evaluate_device applies to
    # the checkpoint
    # a diffusion model samples as exported (export.sampler may override the checkpoint's settings): the
    # PyTorch model takes the ONNX card's sampler, so both rows score the same sampler
    sampler = _exported_sampler(onnx_model)
    models = {"pytorch": (str(torch_model), device, sampler), "onnx": (str(onnx_model), "cpu", None)}
    if precision != "fp32":  # the reduced-precision export beside the fp32 one, scored and timed beside it
        from effifusion.runtime.precision import precision_file

        reduced = precision_file(onnx_model, precision)
        _require_file(reduced, f"{precision} ONNX model (export.precision: {precision})", "export")
        models[precision] = (str(reduced), "cpu", None)
    rtf_signal = _rtf_signal(items[0]["noisy"], cfg.rtf_seconds, sr)
    t0 = time.perf_counter()
    clipped, rtf = enhance_all(items, models, enhanced_dir, workers, rtf_signal, sr)
    enhance_s = time.perf_counter() - t0
    rows = score_all(items, enhanced_dir, workers, clipped)
    reduced_rows = score_all(items, enhanced_dir, workers, clipped, systems=(precision,)) if precision != "fp32" else []
    score_s = time.perf_counter() - t0 - enhance_s

    metrics = {"protocol": PROTOCOL, "conventions": dict(CONVENTIONS_NOTE), **summarize_scores(rows)}
    if precision != "fp32":
        metrics["precision"] = {"precision": precision, "onnx": models[precision][0],
                                **score_precision(rows, reduced_rows, precision)}
    shown = device if device == "cpu" else f"{device} (ONNX: cpu)"
    metrics["rtf"] = {**rtf, "input_seconds": cfg.rtf_seconds, "threads": 1, "device": shown}
    if precision != "fp32":  # measured in the same worker pool as the fp32 export, one after the other
        metrics["rtf"][f"{precision}_over_onnx"] = round(rtf[precision] / rtf["onnx"], 4)
    metrics["model"] = _model_summary(torch_model, onnx_model)
    metrics["variant"] = variant
    if bench:
        metrics["bench"] = bench_export(onnx_model)
    metrics["seconds"] = {"enhance": round(enhance_s, 2), "score": round(score_s, 2),
                          "total": round(time.perf_counter() - start, 2)}

    with atomic_dir(out_dir) as tmp:
        write_reports(tmp, rows, metrics, items, enhanced_dir, cfg.num_spectrograms, sr)
    files.write_json(Path(metrics_path), metrics)
    if track:
        _log_to_mlflow(params.raw, torch_model, metrics, out_dir)
    return metrics


# ---------------------------------------------------------------------------------------------
# inputs


def _require_file(path: Path, what: str, stage: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found (produced by the {stage} stage: run `dvc repro {stage}`)")


def load_items(prepared_dir: Path, unseen_dir: Path) -> list[dict[str, Any]]:
    """The utterances to evaluate: {set, utt, noise, snr_db, clean, noisy} from both manifests."""
    sources = {"test": (prepared_dir / "test.csv", "prepare"),
               "unseen": (unseen_dir / "unseen.csv", "mix_unseen")}
    items = []
    for set_name, (manifest, stage) in sources.items():
        if not manifest.is_file():
            raise DataError(f"{manifest}: {set_name} manifest not found (produced by the {stage} stage: "
                            f"run `dvc repro {stage}`)")
        items += [{"set": set_name, "utt": r["utt"], "noise": r["noise"] or "unknown", "snr_db": r["snr_db"],
                   "clean": r["clean"], "noisy": r["noisy"]} for r in read_manifest(manifest)]
    return items


def _rtf_signal(noisy_path: Path, seconds: float, sr: int) -> np.ndarray:
    """``seconds`` of real noisy speech (a test file, repeated when shorter) to time the models on."""
    wav, _ = read_wav(noisy_path, sample_rate=sr)
    n = int(round(seconds * sr))
    return np.tile(wav, math.ceil(n / len(wav)))[:n].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# worker processes: each loads each model once, one thread


_MODELS: dict[str, tuple[str, str, dict[str, Any] | None]] = {}
_ENHANCERS: dict[str, Any] = {}


def _init_worker(models: dict[str, tuple[str, str, dict[str, Any] | None]]) -> None:
    single_thread_worker()
    _MODELS.update(models)


def _enhancer(system: str) -> Any:
    if system not in _ENHANCERS:
        from effifusion.inference.backends import load_enhancer

        path, device, sampler = _MODELS[system]
        _ENHANCERS[system] = load_enhancer(path, device=device, threads=1, sampler=sampler)
    return _ENHANCERS[system]


def _exported_sampler(onnx_model: Path) -> dict[str, Any] | None:
    """The sampler settings in an export's model card (diffusion models), else None."""
    from effifusion.runtime.onnx_model import onnx_session

    meta = onnx_session(onnx_model, threads=1).get_modelmeta().custom_metadata_map
    return json.loads(meta["sampler"]) if "sampler" in meta else None


def _enhance_file(job: tuple[str, str, str]) -> dict[str, int]:
    """Enhance one noisy WAV with ``system``'s model and write the 16-bit result."""
    system, noisy_path, out_path = job
    wav, sr = read_wav(noisy_path, sample_rate=SAMPLE_RATE)
    est = np.asarray(_enhancer(system).enhance_segment(wav), dtype=np.float32)  # PROTOCOL
    if est.shape != wav.shape:
        raise AudioError(f"{noisy_path}: the {system} model returned {est.shape[0]} samples for "
                         f"{wav.shape[0]}")
    check_audio(est, f"{noisy_path} enhanced by the {system} model {_MODELS[system][0]}")
    write_wav(out_path, est, sr)
    return {"clipped_samples": int(np.count_nonzero(np.abs(est) > 1.0))}


def _measure_rtf(system: str, signal: np.ndarray, sr: int) -> float:
    """Real-time factor = compute seconds / audio seconds (median of RTF_REPEATS runs after a warm-up)."""
    enhancer = _enhancer(system)
    enhancer.enhance_segment(signal)
    times = []
    for _ in range(RTF_REPEATS):
        t0 = time.perf_counter()
        enhancer.enhance_segment(signal)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (len(signal) / sr)


def enhanced_path(enhanced_dir: Path, system: str, item: dict[str, Any]) -> Path:
    return enhanced_dir / system / item["set"] / f"{item['utt']}.wav"


def enhance_all(items: list[dict[str, Any]], models: dict[str, tuple[str, str, dict[str, Any] | None]],
                enhanced_dir: Path, workers: int, rtf_signal: np.ndarray,
                sr: int) -> tuple[dict[str, int], dict[str, float]]:
    """Enhance every item with every model in ``workers`` processes, then time each model alone.

    Returns ({enhanced WAV path: clipped sample count}, {system: real-time factor}).
    """
    jobs = []
    for system in models:
        for set_name in SETS:
            # no stale files from older runs
            shutil.rmtree(enhanced_dir / system / set_name, ignore_errors=True)
        jobs += [(system, str(it["noisy"]), str(enhanced_path(enhanced_dir, system, it))) for it in items]
    ctx = get_context("spawn")  # forking a process that already ran torch's thread pool can hang
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(models,)) as pool:
        chunk = max(1, min(8, math.ceil(len(jobs) / (4 * workers))))
        done = list(tqdm(pool.map(_enhance_file, jobs, chunksize=chunk), total=len(jobs), desc="enhance",
                         unit="file", dynamic_ncols=True))
        # the pool is idle now: each measurement runs alone on one core, one thread
        rtf = {s: pool.submit(_measure_rtf, s, rtf_signal, sr).result() for s in models}
    return {job[2]: r["clipped_samples"] for job, r in zip(jobs, done)}, rtf


def score_all(items: list[dict[str, Any]], enhanced_dir: Path, workers: int,
              clipped: dict[str, int], systems: tuple[str, ...] = SYSTEMS) -> list[dict[str, Any]]:
    """Per-utterance rows {set, system, utt, noise, snr_db, metrics, clipped_samples} for each of ``systems``.

    The metrics are METRICS (composites in the MATLAB convention) and PUBLISHED_METRICS, from one pass.
    """
    pairs, keys = [], []
    for it in items:
        for system in systems:
            path = it["noisy"] if system == "noisy" else enhanced_path(enhanced_dir, system, it)
            pairs.append((f"{it['set']}/{system}/{it['utt']}", it["clean"], path, it["noisy"]))
            keys.append((it, system, path))
    scores = score_files(pairs, workers=workers, desc="score", extra_conventions=(PUBLISHED,))
    return [{"set": it["set"], "system": system, "utt": it["utt"], "noise": it["noise"],
             "snr_db": it["snr_db"], **{m: s[m] for m in ALL_METRICS},
             "clipped_samples": clipped.get(str(path))}
            for (it, system, path), s in zip(keys, scores)]


# ---------------------------------------------------------------------------------------------
# aggregation


def _mean(rows: list[dict[str, Any]], metric: str) -> float:
    return float(np.mean([r[metric] for r in rows]))


def _metrics_in(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """METRICS, plus the published-convention composites when every row has them."""
    return ALL_METRICS if rows and all(m in r for r in rows for m in PUBLISHED_METRICS) else METRICS


def summarize_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per set: n, per-system means, PyTorch-minus-noisy gains and ONNX-minus-PyTorch differences.

    ``rows`` are per-utterance rows {set, system, utt, <metrics>}, optionally with the
    published-convention composites (``csig_published``, ...), which are then summarised alike.
    The ONNX differences are means of per-utterance differences, plus the largest per-utterance
    |ΔPESQ| (``pesq_max_abs``).
    """
    out: dict[str, Any] = {}
    metric_keys = _metrics_in(rows)
    for set_name in SETS:
        by_system = {s: sorted((r for r in rows if r["set"] == set_name and r["system"] == s),
                               key=lambda r: r["utt"]) for s in SYSTEMS}
        if not by_system["noisy"]:
            continue
        means = {s: {m: _mean(by_system[s], m) for m in metric_keys} for s in SYSTEMS}
        pairs = list(zip(by_system["onnx"], by_system["pytorch"]))
        diff = {m: [o[m] - p[m] for o, p in pairs] for m in metric_keys}
        out[set_name] = {
            "n": len(by_system["noisy"]),
            **means,
            "improvement": {m: means["pytorch"][m] - means["noisy"][m] for m in metric_keys},
            "onnx_minus_pytorch": {**{m: float(np.mean(diff[m])) for m in metric_keys},
                                   "pesq_max_abs": float(np.max(np.abs(diff["pesq"])))},
        }
    return out


def score_precision(rows: list[dict[str, Any]], reduced_rows: list[dict[str, Any]], precision: str
                    ) -> dict[str, Any]:
    """Per set: the reduced-precision export's mean metrics and its difference from the fp32 export's
    (``minus_fp32``: means of per-utterance differences, plus the largest per-utterance |ΔPESQ|)."""
    out: dict[str, Any] = {}
    metric_keys = _metrics_in(rows)
    for set_name in SETS:
        fp32 = {r["utt"]: r for r in rows if r["set"] == set_name and r["system"] == "onnx"}
        reduced = sorted((r for r in reduced_rows if r["set"] == set_name and r["system"] == precision),
                         key=lambda r: r["utt"])
        if not reduced:
            continue
        diff = {m: [r[m] - fp32[r["utt"]][m] for r in reduced] for m in metric_keys}
        out[set_name] = {"n": len(reduced), precision: {m: _mean(reduced, m) for m in metric_keys},
                         "minus_fp32": {**{m: float(np.mean(diff[m])) for m in metric_keys},
                                        "pesq_max_abs": float(np.max(np.abs(diff["pesq"])))}}
    return out


def _snr_key(snr: float) -> str:
    return "" if not math.isfinite(snr) else f"{snr:g}"


def condition_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean metrics per set × noise × SNR (plus "all"-noise rows per SNR and one all/all row per set).

    Columns: set, noise, snr_db, n, then ``<system>_<metric>`` for every system and metric (the
    published-convention composites too when the rows have them: ``noisy_csig_published``, ...).
    """
    table = []
    metric_keys = _metrics_in(rows)
    for set_name in SETS:
        set_rows = [r for r in rows if r["set"] == set_name]
        if not set_rows:
            continue
        snrs = sorted({r["snr_db"] for r in set_rows if math.isfinite(r["snr_db"])}, reverse=True)
        snrs += [float("nan")] if any(not math.isfinite(r["snr_db"]) for r in set_rows) else []
        noises = sorted({r["noise"] for r in set_rows})
        cells = [(noise, snr) for noise in noises for snr in snrs]
        cells += [("all", snr) for snr in snrs] + [("all", None)]
        for noise, snr in cells:
            sel = [r for r in set_rows if (noise == "all" or r["noise"] == noise)
                   and (snr is None or _snr_key(r["snr_db"]) == _snr_key(snr))]
            if not sel:
                continue
            row = {"set": set_name, "noise": noise, "snr_db": "all" if snr is None else _snr_key(snr),
                   "n": sum(r["system"] == "noisy" for r in sel)}
            for system in SYSTEMS:
                sys_rows = [r for r in sel if r["system"] == system]
                row.update({f"{system}_{m}": _mean(sys_rows, m) for m in metric_keys})
            table.append(row)
    return table


# ---------------------------------------------------------------------------------------------
# reports


def write_reports(out_dir: Path, rows: list[dict[str, Any]], metrics: dict[str, Any],
                  items: list[dict[str, Any]], enhanced_dir: Path, num_spectrograms: int, sr: int) -> None:
    """per_utterance.csv, by_condition.{csv,md}, summary.md, SNR plots and spectrograms into ``out_dir``."""
    files.write_csv(out_dir / "per_utterance.csv", rows,
                        ["set", "system", "utt", "noise", "snr_db", *_metrics_in(rows), "clipped_samples"])
    table = condition_table(rows)
    files.write_csv(out_dir / "by_condition.csv", table)
    files.write_text(out_dir / "by_condition.md", condition_markdown(table))
    # no timings in the stage's output (a rerun writes the same bytes): RTF is in metrics/ and MLflow
    files.write_text(out_dir / f"summary_{metrics.get('variant', 'model')}.md",
                     summary_markdown({k: v for k, v in metrics.items() if k not in TIMING_KEYS}))
    for set_name in SETS:
        for metric in SNR_PLOT_METRICS:
            if any(r["set"] == set_name and r["noise"] != "all" for r in table):
                snr_plot(table, set_name, metric, out_dir / f"{set_name}_{metric}_by_snr.png")
    by_key = {(r["set"], r["system"], r["utt"]): r for r in rows}
    for it in pick_spectrogram_items(items, num_spectrograms):
        enhanced = enhanced_dir / "pytorch" / it["set"] / f"{it['utt']}.wav"
        sources = (("noisy", it["noisy"]), ("enhanced (PyTorch)", enhanced), ("clean", it["clean"]))
        signals = {name: read_wav(path, sample_rate=sr)[0] for name, path in sources}
        before, after = (by_key[(it["set"], s, it["utt"])]["pesq"] for s in ("noisy", "pytorch"))
        title = (f"{it['set']} {it['utt']}: {it['noise']} {_snr_key(it['snr_db'])} dB, "
                 f"PESQ {before:.2f} → {after:.2f}")
        figures.spectrogram_figure(signals, sr, out_dir / f"spectrogram_{it['utt']}.png", title)


def pick_spectrogram_items(items: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` utterances spread over both sets and over their SNRs (lowest to highest), deterministic."""
    per_set = {s: sorted((it for it in items if it["set"] == s), key=lambda it: (it["snr_db"], it["utt"]))
               for s in SETS}
    per_set = {s: v for s, v in per_set.items() if v}
    picked: list[dict[str, Any]] = []
    remaining = min(count, len(items))
    quota = {s: 0 for s in per_set}
    while remaining:  # share the count between the sets, as evenly as their sizes allow
        for s in per_set:
            if remaining and quota[s] < len(per_set[s]):
                quota[s] += 1
                remaining -= 1
    for s, k in quota.items():
        if k:
            picked += [per_set[s][int(i)] for i in np.unique(np.linspace(0, len(per_set[s]) - 1, k).round())]
    return picked


def _fmt(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric in THREE_DECIMALS else f"{value:.2f}"


def _fmt_gain(value: float, metric: str) -> str:
    return f"{value:+.3f}" if metric in THREE_DECIMALS else f"{value:+.2f}"


def summary_markdown(metrics: dict[str, Any]) -> str:
    """The headline table: noisy / PyTorch / ONNX rows × PESQ CSIG CBAK COVL SSNR STOI ESTOI SI-SDR per
    set (MATLAB convention), then, when present, the composites in the published convention."""
    lines = ["# Evaluation", ""]
    if "protocol" in metrics:
        lines += [f"Inference protocol: {metrics['protocol']}.", ""]
    model = metrics.get("model", {})
    if model:
        lines += [f"Generator `{model['checkpoint']}`: {model['params_total'] / 1e6:.3f} M parameters "
                  f"({model['params_nonzero'] / 1e6:.3f} M non-zero), {model['gmac_per_second']:.2f} "
                  f"GMAC per second of audio; ONNX `{model['onnx']}` ({model['onnx_mb']:.2f} MB).", ""]
    lines += [UNITS_NOTE, ""]
    columns = ["system", *(METRIC_LABELS[m] for m in METRICS)]
    for set_name in SETS:
        if set_name not in metrics:
            continue
        res = metrics[set_name]
        lines += [f"## {SET_TITLES[set_name]}: {res['n']} files", "", MATLAB_CAPTION, ""]
        table = [{"system": SYSTEM_LABELS[s], **{METRIC_LABELS[m]: _fmt(res[s][m], m) for m in METRICS}}
                 for s in SYSTEMS]
        table.append({"system": "gain (PyTorch − noisy)",
                      **{METRIC_LABELS[m]: _fmt_gain(res["improvement"][m], m) for m in METRICS}})
        lines += [files.markdown_table(table, columns).rstrip(), ""]
        if all(m in res["noisy"] for m in PUBLISHED_METRICS):
            labels = PUBLISHED_LABELS
            published = [{"system": SYSTEM_LABELS[s], **{labels[m]: _fmt(res[s][m], m) for m in labels}}
                         for s in SYSTEMS]
            published.append({"system": "gain (PyTorch − noisy)",
                              **{labels[m]: _fmt_gain(res["improvement"][m], m) for m in labels}})
            table_md = files.markdown_table(published, ["system", *labels.values()]).rstrip()
            lines += [PUBLISHED_CAPTION, "", table_md, ""]
        d = res["onnx_minus_pytorch"]
        lines += [f"ONNX − PyTorch: mean ΔPESQ {d['pesq']:+.4f}, largest per-file |ΔPESQ| "
                  f"{d['pesq_max_abs']:.4f}, mean ΔSTOI {d['stoi']:+.5f}.", ""]
    reduced = metrics.get("precision") or {}
    for set_name in SETS:
        if set_name in reduced:
            p, d = reduced["precision"], reduced[set_name]["minus_fp32"]
            lines += [f"{p} ONNX − fp32 ONNX ({set_name}, `{reduced['onnx']}`): mean ΔPESQ {d['pesq']:+.4f}, "
                      f"largest per-file |ΔPESQ| {d['pesq_max_abs']:.4f}, mean ΔSTOI {d['stoi']:+.5f}.", ""]
    rtf = metrics.get("rtf")
    if not rtf:
        lines += ["Speed (real-time factors of both models) is in metrics/evaluate.json and the MLflow run "
                  "(rtf/): a measurement, kept out of this report so that it depends on its inputs only.", ""]
    if rtf:
        lines += [f"Real-time factor (compute time / audio time, {rtf['input_seconds']:g} s input, "
                  f"{rtf['threads']} thread, {rtf['device']}): PyTorch {rtf['pytorch']:.3f}, "
                  f"ONNX Runtime {rtf['onnx']:.3f} (below 1 = faster than real time).", ""]
    return "\n".join(lines)


def condition_markdown(table: list[dict[str, Any]]) -> str:
    """Per set, one row per noise × SNR: each metric as "noisy → PyTorch" (composites: MATLAB)."""
    lines = ["# Results by condition", "",
             "Each cell: mean over the condition's files, noisy input → PyTorch model output "
             "(ONNX means, and the composites in the published convention as "
             "`<system>_csig_published`, ..., are in by_condition.csv).", "", UNITS_NOTE, ""]
    for set_name in SETS:
        rows = [r for r in table if r["set"] == set_name]
        if not rows:
            continue
        lines += [f"## {SET_TITLES[set_name]}", "", MATLAB_CAPTION, ""]
        shown = [{"noise": r["noise"], "SNR (dB)": r["snr_db"], "n": r["n"],
                  **{METRIC_LABELS[m]: f"{_fmt(r[f'noisy_{m}'], m)} → {_fmt(r[f'pytorch_{m}'], m)}"
                     for m in METRICS}}
                 for r in rows]
        lines += [files.markdown_table(shown).rstrip(), ""]
    return "\n".join(lines)


def snr_plot(table: list[dict[str, Any]], set_name: str, metric: str, path: Path) -> Path:
    """Metric against SNR, one colour per noise type: noisy input dashed, PyTorch output solid."""
    plt = figures.pyplot()
    rows = [r for r in table if r["set"] == set_name and r["snr_db"] not in ("all", "")]
    noises = sorted({r["noise"] for r in rows} - {"all"})
    noises += ["all"] if any(r["noise"] == "all" for r in rows) else []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = plt.get_cmap("tab10")
    for i, noise in enumerate(noises):
        pts = sorted((float(r["snr_db"]), r[f"noisy_{metric}"], r[f"pytorch_{metric}"]) for r in rows
                     if r["noise"] == noise)
        x = [p[0] for p in pts]
        style = {"color": "black", "lw": 2.2} if noise == "all" else {"color": colours(i % 10), "lw": 1.3}
        label = "mean of all noises" if noise == "all" else noise
        ax.plot(x, [p[2] for p in pts], "-o", ms=3, label=label, **style)
        ax.plot(x, [p[1] for p in pts], "--", **style, alpha=0.8)
    ax.plot([], [], "k-", label="enhanced (solid)")
    ax.plot([], [], "k--", label="noisy (dashed)")
    ax.set_xlabel("SNR (dB)")
    unit = " (wide-band)" if metric == "pesq" else " (dB)" if metric in DB_METRICS else ""
    ax.set_ylabel(METRIC_LABELS[metric] + unit)
    ax.set_title(f"{SET_TITLES[set_name]}: {METRIC_LABELS[metric]} by SNR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return figures.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# model facts and MLflow


def _model_summary(torch_model: Path, onnx_model: Path) -> dict[str, Any]:
    """Parameter counts and analytic GMAC per second of the checkpoint; the ONNX file's size."""
    from effifusion.models.cost import frames_for, parameter_counts
    from effifusion.models.registry import load_checkpoint

    model, _ = load_checkpoint(torch_model)
    counts = parameter_counts(model)
    macs = model.macs(frames_for(1.0, model.sample_rate, model.frontend.hop_length))["total"]
    return {"checkpoint": str(torch_model), "arch": model.arch, "params_total": counts["params_total"],
            "params_nonzero": counts["params_nonzero"], "gmac_per_second": round(macs / 1e9, 4),
            "onnx": str(onnx_model), "onnx_mb": round(onnx_model.stat().st_size / 2 ** 20, 3)}


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """MLflow names, one section per set (effifusion.tracking.names): test/pesq (PyTorch), test/noisy_pesq,
    test/onnx_pesq, test/improvement_pesq, test/onnx_minus_torch_pesq, test/onnx_minus_torch_pesq_max_abs,
    test/n, unseen/... alike, the published-convention composites likewise (test/csig_published,
    test/noisy_csig_published, ...), and the real-time factors as rtf/torch and rtf/onnx."""
    flat: dict[str, float] = {}
    for set_name in SETS:
        if set_name not in metrics:
            continue
        res = metrics[set_name]
        row: dict[str, Any] = {"n": res["n"]}
        for m in [k for k in ALL_METRICS if k in res["pytorch"]]:
            row[m] = res["pytorch"][m]
            row[f"noisy_{m}"] = res["noisy"][m]
            row[f"onnx_{m}"] = res["onnx"][m]
            row[f"improvement_{m}"] = res["improvement"][m]
            row[f"onnx_minus_torch_{m}"] = res["onnx_minus_pytorch"][m]
        row["onnx_minus_torch_pesq_max_abs"] = res["onnx_minus_pytorch"]["pesq_max_abs"]
        flat.update(in_section(set_name, row))
    if "rtf" in metrics:
        flat.update(in_section(RTF, {"torch": metrics["rtf"]["pytorch"], "onnx": metrics["rtf"]["onnx"]}))
    reduced = metrics.get("precision") or {}
    if reduced:  # the reduced-precision export: test/int8_pesq, test/int8_minus_onnx_pesq, ..., rtf/onnx_int8
        p = reduced["precision"]
        for set_name in SETS:
            if set_name in reduced:
                res = reduced[set_name]
                flat.update(in_section(set_name, {
                    **{f"{p}_{m}": v for m, v in res[p].items()},
                    **{f"{p}_minus_onnx_{m}": v for m, v in res["minus_fp32"].items()}}))
        if p in metrics.get("rtf", {}):
            flat.update(in_section(RTF, {f"onnx_{p}": metrics["rtf"][p]}))
    bench = metrics.get("bench") or {}
    flat.update(in_section(BENCH, {k: bench[k] for k in BENCH_LOGGED
                                   if isinstance(bench.get(k), (int, float)) and not isinstance(bench[k], bool)}))
    return flat


def _log_to_mlflow(params: dict[str, Any], model: Path, metrics: dict[str, Any], out_dir: Path) -> None:
    import mlflow

    from effifusion.tracking import runs as tracking

    with tracking.resume_run(model, params, "evaluate"):
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.set_tag("evaluation_protocol", PROTOCOL)
        mlflow.log_artifacts(str(out_dir), "evaluation")


# ---------------------------------------------------------------------------------------------
# dense and pruned side by side


def bench_export(onnx_model: Path) -> dict[str, Any]:
    """The export's measured cost: `effifusion bench --model` in a fresh process (its own peak memory),
    BENCH_SECONDS of input, BENCH_THREADS thread; MACs and non-zero parameters from its model card."""
    from effifusion.inference.bench import bench_exported

    return bench_exported(Path(onnx_model), seconds=BENCH_SECONDS, threads=BENCH_THREADS)


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints are the same bytes (``prune.method: none`` copies the dense model)."""
    from effifusion.tracking.runs import model_md5

    return Path(a).is_file() and Path(b).is_file() and model_md5(a) == model_md5(b)


def combine_variants(dense: dict[str, Any], pruned: dict[str, Any], prune: PruneConfig) -> dict[str, Any]:
    """metrics/evaluate.json: one entry per variant (each the evaluate() result of its models), the pruning
    that made the pruned one, and the pruned-minus-dense differences of the PyTorch means."""
    out: dict[str, Any] = {"protocol": PROTOCOL, "conventions": dict(CONVENTIONS_NOTE),
                           "prune": {"method": prune.method, "amount": prune.amount}}
    for name, m in (("dense", dense), ("pruned", pruned)):
        out[name] = {k: v for k, v in m.items() if k not in ("protocol", "conventions")}
    for set_name in SETS:
        if set_name in dense and set_name in pruned:
            d, p = dense[set_name]["pytorch"], pruned[set_name]["pytorch"]
            out.setdefault("pruned_minus_dense", {})[set_name] = {m: p[m] - d[m] for m in d if m in p}
    return out


def variants_markdown(metrics: dict[str, Any]) -> str:
    """reports/evaluate/summary.md: per set one table, rows noisy, dense and pruned (PyTorch and ONNX), then
    each variant's size and measured cost. The per-variant details are in reports/evaluate_dense/ (dense)
    and in this folder's other files (pruned)."""
    prune = metrics["prune"]
    lines = ["# Evaluation: dense and pruned", "", f"Inference protocol: {metrics['protocol']}.", "",
             f"Pruned = the dense model after prune.method `{prune['method']}`"
             + ("" if prune["method"] == "none" else f", prune.amount {prune['amount']}")
             + ("" if prune["method"] != "none" else " (a copy: the same weights, scored once)") + ".", "",
             UNITS_NOTE, ""]
    columns = ["system", *(METRIC_LABELS[m] for m in METRICS)]
    for set_name in SETS:
        if set_name not in metrics["dense"]:
            continue
        dense, pruned = metrics["dense"][set_name], metrics["pruned"][set_name]
        lines += [f"## {SET_TITLES[set_name]}: {dense['n']} files", "", MATLAB_CAPTION, ""]
        rows = [("noisy", dense["noisy"])]
        rows += [(f"{v} ({SYSTEM_LABELS[s]})", metrics[v][set_name][s]) for v in VARIANTS for s in ENHANCED_SYSTEMS]
        table = [{"system": label, **{METRIC_LABELS[m]: _fmt(res[m], m) for m in METRICS}} for label, res in rows]
        table.append({"system": "pruned − dense (PyTorch)",
                      **{METRIC_LABELS[m]: _fmt_gain(pruned["pytorch"][m] - dense["pytorch"][m], m)
                         for m in METRICS}})
        lines += [files.markdown_table(table, columns).rstrip(), ""]
    cost = []
    for v in VARIANTS:
        model = metrics[v].get("model", {})
        cost.append({"variant": v, "parameters": model.get("params_total"),
                     "non-zero": model.get("params_nonzero"), "GMAC/s (analytic)": model.get("gmac_per_second"),
                     "ONNX MB": model.get("onnx_mb")})
    lines += ["## Size", "", files.markdown_table(cost).rstrip(), "",
              "Speed (real-time factor, peak memory) is in metrics/evaluate.json and the MLflow runs (rtf/, "
              "bench/): a measurement, kept out of this report so that it depends on its inputs only.", ""]
    return "\n".join(lines)
