"""`effifusion bench`: what one inference of a preset's model costs on this machine.

    effifusion bench --preset paper --seconds 2 --backend onnx --threads 1 [--json]

The preset's model (``presets/NAME.yaml``: its ``model`` section and ``audio.sample_rate``) is built
with random weights (seed 0; cost does not depend on the weights), saved as a checkpoint in a
temporary folder and, for ``--backend onnx``, exported there with the pipeline's own ``export_onnx``
(parity checked at 0.5 s only; export time is not measured). The measurement then runs in a fresh
child process (``python -m effifusion.inference.bench --child ...``), so its peak memory is that of
inference alone: it sets the thread counts (OMP/MKL/OpenBLAS variables before any import, ONNX
Runtime intra-op threads or ``torch.set_num_threads`` through ``load_enhancer``), loads the model
with ``load_enhancer``, makes ``S`` seconds of a deterministic speech-band signal
(``export.parity_signal``: harmonic tones under a syllable-rate envelope plus noise), records its
resident size, runs an untimed 0.5 s warm-up (ONNX Runtime's arena, kernel choice), then times one
``Enhancer.enhance`` of the whole input and reads its peak resident size (``ru_maxrss``).

"chunked" says whether the enhancer cut the input into pieces: every call of the enhancer's batch
runner is recorded, and an enhancer that exposes a ``max_piece_s`` limit is reported with it. Today
``Enhancer.enhance`` always runs one piece. MACs are the architecture's analytic count
(``EnhancementModel.macs``, models/cost.py) summed over the pieces actually run.

Output (``--json``: one JSON object on the last line of stdout)::

    {"preset": "paper",            # preset name (or params file) the model came from
     "arch": "effifusion_gan",
     "backend": "onnx",            # onnx (ONNX Runtime, CPU) | pytorch (eager, CPU)
     "threads": 1,                 # intra-op threads (ORT) / torch threads, and OMP/MKL variables
     "seconds": 2.0,               # input length
     "sample_rate": 16000,
     "rtf": 1.23,                  # real-time factor: compute_s / seconds (below 1: faster than real time)
     "compute_s": 2.46,            # wall-clock seconds of the timed enhance (warm-up excluded)
     "gmac_per_s_audio": 24.9,     # gmac_total / seconds: the model's cost per second of audio at this
                                   # length (grows with length: attention is quadratic in it)
     "gmac_total": 49.8,           # analytic GMACs of this input (summed over pieces)
     "gmac_per_s_achieved": 20.2,  # gmac_total / compute_s: the arithmetic rate reached
     "peak_rss_mib": 812.0,        # peak resident memory of the measuring process (model, runtime, run)
     "baseline_rss_mib": 350.0,    # its resident memory once the model and input are loaded, before any run
     "params_total": 1086033,
     "network_evaluations": 1,     # network runs per piece summed (a diffusion sampler: 1 to ~60 per piece)
     "chunked": false,             # whether the input was run in several pieces
     "piece_s": 2.0,               # longest piece run, in seconds (the whole input when not chunked)
     "gemm_gflops": 91.2,          # this CPU's fp32 matrix-multiply rate on these threads, GFLOP/s: the
                                   # reference (runtime/cost.py gemm_gflops: numpy matmul of 2048² float32,
                                   # best of 3 products before the model is loaded and 3 after the run)
     "gemm_source": "numpy 2.4.6 matmul (scipy-openblas 0.3.31), float32 2048x2048",
     "gflops_achieved": 40.4,      # 2 * gmac_total / compute_s: the FLOP rate the model reached
     "efficiency": 0.443,          # gflops_achieved / gemm_gflops: the share of this CPU's GEMM rate
     "profile_top": null,          # --profile (onnx only): ONNX Runtime's operators by time, longest first:
                                   # [{"op": "MatMul", "nodes": 48, "ms": 812.3 (per timed run),
                                   #   "share": 0.31 (of the summed node time), "gflops": 57.0 (MatMul, Gemm,
                                   #   Conv, MultiHeadAttention; else null)}, ...] (runtime/cost.py profile_top)
     "platform": {"python": "3.12.3", "onnxruntime": "1.22.0", "torch": "2.11.0",
                  "cpu": "<model name>, N cores available",
                  "cpu_features": ["avx2", "fma", "avx512f", ...]}}  # vector extensions (/proc/cpuinfo)

Errors the user can fix (unknown preset, ``seconds`` <= 0, ``threads`` < 1, unknown backend) are
ConfigErrors (one line, exit 2); a measuring process that dies (killed for lack of memory, say) is
a BenchError saying so with its exit code. ``bench/bench_infer.py`` calls ``prepare`` and
``measure`` for its table (with ``chunk_s`` and ``repeats``, which this command does not use).

``effifusion bench --model FILE.onnx [--seconds S --threads N --repeats R]`` (and ``bench_exported``,
which the evaluate stage calls) measures a given export instead: an effifusion-GAN-style graph or a
diffusion export (its sampler runs around the network, runtime/diffusion_runtime.py). The same child
process runs it, ``R`` timed runs after the warm-up (default 3); ``compute_s`` is their median. The row
has ``model`` (the file) where a preset's has ``preset``, and adds ``repeats``, ``times_s`` (each run),
``params_nonzero``, ``file_bytes`` (the file, plus a diffusion export's predictive network beside it)
and where the MACs came from: ``macs_source`` "card" (the card's ``gmac_per_second``, an analytic count
for 1 s of audio, times the audio run), "config" (the architecture in the card's ``config`` rebuilt with
PyTorch and counted at this length, when its parameter count matches the card's: a channel-pruned file
whose config no longer describes its shapes does not) or null, with ``macs_note`` saying which and why;
the three ``gmac_*`` values, ``gflops_achieved`` and ``efficiency`` are null when it is null.
``params_total`` / ``params_nonzero`` are the card's (null if it lacks them); ``network_evaluations``
comes from the card's sampler settings. ``--profile`` works here too (``profile_top`` over the timed runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from effifusion.core.errors import ConfigError, EffiFusionError
from effifusion.core.parallel import THREAD_ENV

BACKENDS = {"onnx": "model.onnx", "pytorch": "model.pt"}  # --backend -> model file it runs
SEED = 0  # random weights: cost does not depend on them
WARMUP_S = 0.5
PARITY_S = 0.5  # export check length (the pipeline's export checks several; speed matters here)
SIGNAL_SEED = 3
MIB = 2**20
MODEL_REPEATS = 3  # --model: timed runs after the warm-up; the row's compute_s is their median
PROFILE_TOP = 10  # --profile: operators listed


class BenchError(EffiFusionError):
    """The measuring process failed or died (killed for lack of memory, say)."""


@dataclass
class Prepared:
    """A model ready to measure: the torch model (for MAC and parameter counts) and its files."""

    name: str
    model: Any  # EnhancementModel
    checkpoint: Path
    onnx: Path | None


# ---------------------------------------------------------------------------------------------
# Arguments


def check_args(seconds: Any, backend: Any, threads: Any) -> tuple[float, str, int]:
    """(seconds, backend, threads) checked; ConfigError naming the bad one."""
    try:
        secs = float(seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"--seconds {seconds!r}: not a number") from None
    if not (math.isfinite(secs) and secs > 0):
        raise ConfigError(f"--seconds {seconds}: must be a positive number of seconds")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: unknown backend (known: {', '.join(BACKENDS)})")
    try:
        n_threads = int(str(threads))
    except ValueError:
        raise ConfigError(f"--threads {threads!r}: not a whole number") from None
    if n_threads < 1:
        raise ConfigError(f"--threads {threads}: must be at least 1")
    return secs, backend, n_threads


# ---------------------------------------------------------------------------------------------
# Parent: model files, the child process, the row


def prepare(out_dir: Path, preset: str, backends: tuple[str, ...] = ("onnx", "pytorch"),
            checkpoint: str | os.PathLike | None = None) -> Prepared:
    """The preset's model with random weights (or ``checkpoint``'s), saved in ``out_dir`` as a
    checkpoint, and exported to ONNX there when "onnx" is among ``backends`` (not timed)."""
    from dataclasses import replace

    import torch

    from effifusion.core.config import load_settings, preset_path
    from effifusion.core.settings import AudioConfig
    from effifusion.models.registry import build_model, load_checkpoint, save_checkpoint

    params = load_settings(preset_path(preset))  # the preset's complete params, checked and typed
    out_dir = Path(out_dir)
    if checkpoint is not None:
        model, _ = load_checkpoint(checkpoint)
        ckpt, name = Path(checkpoint), str(checkpoint)
    else:
        torch.manual_seed(SEED)
        model = build_model(params.model, params.audio.sample_rate).eval()
        ckpt, name = out_dir / BACKENDS["pytorch"], preset
        save_checkpoint(ckpt, model)
    onnx_path = None
    if "onnx" in backends:
        from effifusion.inference.export import export_onnx

        cfg = replace(params.export, parity_lengths_s=(PARITY_S,))  # export time is not measured: one length
        report = export_onnx(ckpt, out_dir / "onnx", cfg, AudioConfig(model.sample_rate))
        onnx_path = Path(report["onnx_file"])
    return Prepared(name, model, ckpt, onnx_path)


def child_command(model_file: Path, backend: str, seconds: float, threads: int, chunk_s: float | None = None,
                  overlap_s: float = 1.0, repeats: int = 1, warmup_s: float = WARMUP_S, profile: bool = False
                  ) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the measuring process: this interpreter, this effifusion, N threads."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **{var: str(threads) for var in THREAD_ENV}}
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "effifusion.inference.bench", "--child", str(model_file),
           "--backend", backend, "--seconds", repr(seconds), "--threads", str(threads),
           "--repeats", str(repeats), "--warmup-s", repr(warmup_s), "--overlap-s", repr(overlap_s)]
    if chunk_s is not None:
        cmd += ["--chunk-s", repr(chunk_s)]
    if profile:
        cmd += ["--profile"]
    return cmd, env


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON row the child prints last; BenchError when it fails or dies."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        if proc.returncode < 0:
            sig = -proc.returncode
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            hint = (", most likely for lack of memory (try fewer --seconds)" if sig == signal.SIGKILL
                    else "")
            raise BenchError(f"the measuring process was killed by {name} (exit code {proc.returncode})"
                             f"{hint}")
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else "(no message)"
        if proc.returncode == 2 and last.startswith("effifusion bench: error: "):
            # child_main's exit for an EffiFusionError (a model file it cannot load): the user's to fix
            raise ConfigError(last.removeprefix("effifusion bench: error: "))
        last = last.removeprefix("effifusion bench: error: ")
        raise BenchError(f"the measuring process failed (exit code {proc.returncode}): {last[:500]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError("the measuring process printed no result") from None


def platform_info() -> dict[str, Any]:
    """Python, onnxruntime, openvino and torch versions, the CPU (model name, cores available) and its vector
    features (runtime/cost.py CPU_FEATURES: AVX2 ... AMX; [] where /proc/cpuinfo cannot say)."""
    from effifusion.runtime.cost import cpu_features

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"python": platform.python_version(), "onnxruntime": version("onnxruntime"),
            "openvino": version("openvino"), "torch": version("torch").split("+")[0],
            "cpu": f"{cpu}, {cores} cores available", "cpu_features": cpu_features()}


def cost_fields(gmacs: float | None, compute_s: float, child_row: dict[str, Any]) -> dict[str, Any]:
    """The cost model's part of a row: the CPU's GEMM rate measured by the child, the FLOP rate the model
    reached (2 FLOPs per MAC) and their ratio; the profile's top operators when it was profiled."""
    gemm = child_row["gemm_gflops"]
    achieved = None if gmacs is None else 2.0 * gmacs / compute_s
    return {"gemm_gflops": round(gemm, 2), "gemm_source": child_row["gemm_source"],
            "gflops_achieved": None if achieved is None else round(achieved, 3),
            "efficiency": None if achieved is None else round(achieved / gemm, 4),
            "profile_top": child_row.get("profile_top")}


def measure(prepared: Prepared, backend: str, seconds: float, threads: int, chunk_s: float | None = None,
            overlap_s: float = 1.0, repeats: int = 1, warmup_s: float = WARMUP_S, profile: bool = False
            ) -> dict[str, Any]:
    """One measurement in a fresh child process, as the row documented above.

    ``chunk_s``: inputs longer than it go through ``Enhancer.enhance_long`` (chunks overlapping by
    ``overlap_s``); ``repeats``: timed runs, the fastest is kept. The command uses neither. ``profile``:
    ONNX Runtime's profiler runs during the timed runs (``profile_top``; onnx only).
    """
    from effifusion.models.cost import parameter_counts

    model_file = prepared.onnx if backend == "onnx" else prepared.checkpoint
    if model_file is None:
        raise ValueError(f"no {backend} model was prepared")
    cmd, env = child_command(model_file, backend, seconds, threads, chunk_s, overlap_s, repeats, warmup_s,
                             profile)
    child = run_child(cmd, env)
    model = prepared.model
    sr = model.sample_rate
    costs = pieces_macs(model, child["pieces"])
    macs = sum(c["total"] for c in costs)
    compute_s = child["compute_s"]
    evaluations = sum(c.get("evaluations", 1) for c in costs)  # a diffusion sampler runs its network many times
    return {
        "preset": prepared.name,
        "arch": model.arch,
        "backend": backend,
        "runtime": child["runtime"],  # what ran it: onnxruntime, openvino-bf16 (a bf16 export), pytorch
        "threads": threads,
        "seconds": seconds,
        "sample_rate": sr,
        "rtf": round(compute_s / seconds, 4),
        "compute_s": round(compute_s, 4),
        "gmac_per_s_audio": round(macs / 1e9 / seconds, 4),
        "gmac_total": round(macs / 1e9, 4),
        "gmac_per_s_achieved": round(macs / 1e9 / compute_s, 4),
        "peak_rss_mib": round(child["peak_rss_bytes"] / MIB, 1),
        "baseline_rss_mib": round(child["baseline_rss_bytes"] / MIB, 1),
        "params_total": parameter_counts(model)["params_total"],
        "network_evaluations": evaluations,
        "chunked": child["chunked"],
        "piece_s": round(child["piece_s"], 4),
        **cost_fields(macs / 1e9, compute_s, child),
        "platform": platform_info(),
    }


def pieces_macs(model: Any, pieces: list[int]) -> list[dict[str, int]]:
    """``model.macs`` of each piece run (samples; shorter ones are padded to ``min_samples``)."""
    from effifusion.models.cost import frames_for

    sr, hop = model.sample_rate, model.frontend.hop_length
    return [model.macs(frames_for(max(n, model.min_samples) / sr, sr, hop)) for n in pieces]


def run_bench(preset: str, seconds: Any, backend: str, threads: Any,
              progress: bool = True, precision: str = "fp32", profile: bool = False) -> dict[str, Any]:
    """`effifusion bench`: check the arguments, prepare the model in a temporary folder, measure.
    ``precision`` other than fp32: inference/quantize.py's bench_precision (fp32 and it, alternately).
    ``profile``: ONNX Runtime's profiler during the timed run (``profile_top``)."""
    from effifusion.core.config import load_settings, preset_path

    secs, backend, n_threads = check_args(seconds, backend, threads)
    check_profile(profile, backend)
    if precision != "fp32":
        from effifusion.inference.quantize import check_precision

        check_precision(precision)
        if backend != "onnx":
            raise ConfigError(f"--precision {precision}: applies to --backend onnx only")
    path = preset_path(preset)  # unknown preset, bad model settings: one line before any work
    from effifusion.models.registry import check_model_config  # imports torch: after the quick checks

    try:
        check_model_config(load_settings(path).model)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="effifusion-bench-") as tmp:
        if progress:
            what = "building and exporting to ONNX" if backend == "onnx" else "building"
            print(f"effifusion bench: {what} the {preset} model (not timed) ...", file=sys.stderr, flush=True)
        prepared = prepare(Path(tmp), preset, (backend,))
        if precision != "fp32":
            from effifusion.inference.quantize import bench_precision

            return bench_precision(prepared, precision, secs, n_threads, measure, progress)
        if progress:
            print(f"effifusion bench: measuring {secs:g} s, {backend}, {n_threads} thread(s) ...",
                  file=sys.stderr, flush=True)
        return measure(prepared, backend, secs, n_threads, profile=profile)


def check_profile(profile: bool, backend: str) -> None:
    if profile and backend != "onnx":
        raise ConfigError(f"--profile: ONNX Runtime's profiler, which the {backend} backend does not run "
                          "(use --backend onnx)")


# ---------------------------------------------------------------------------------------------
# A given export (`effifusion bench --model FILE.onnx`, bench_exported)


def check_repeats(repeats: Any) -> int:
    """``--repeats`` as a whole number >= 1; ConfigError otherwise."""
    try:
        n = int(str(repeats))
    except ValueError:
        raise ConfigError(f"--repeats {repeats!r}: not a whole number") from None
    if n < 1:
        raise ConfigError(f"--repeats {repeats}: must be at least 1")
    return n


def check_exported(path: str | os.PathLike) -> Path:
    """``path`` as an existing ``.onnx`` file: the cheap checks, before a process is started."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"{path}: not an ONNX model (bench --model measures an exported .onnx file; "
                          "a preset's model: --preset NAME)")
    with open(path, "rb") as f:  # a ModelProto starts with ir_version (field 1, varint): tag byte 0x08
        head = f.read(1)
    if head != b"\x08":
        raise ConfigError(f"{path}: not an ONNX model ({'empty file' if not head else 'not an ONNX protobuf'})")
    return path


def card_evaluations(card: dict[str, Any]) -> int:
    """Network evaluations per piece: a diffusion export's sampler settings say how many; else 1."""
    sampler = card.get("sampler")
    if card.get("runtime") != "diffusion" or not isinstance(sampler, dict):
        return 1
    from effifusion.diffusion.sampler import settings_with  # torch-free

    return settings_with(sampler, None, bool(card.get("predictive_file"))).evaluations()


def card_gmacs(card: dict[str, Any], pieces: list[int], sample_rate: int
               ) -> tuple[float | None, str | None, str]:
    """(GMACs of the pieces run, source, note) from a model card; (None, None, why) when it cannot say.

    The card's ``gmac_per_second`` (1 s of audio) first: the exporter counted the graph it wrote. Else
    the architecture in the card's ``config`` rebuilt and counted at the lengths run, but only when its
    parameter count is the card's: a channel-pruned export's config no longer describes its shapes.
    """
    per_s = card.get("gmac_per_second")
    if per_s is not None:
        try:
            value = float(per_s)
        except (TypeError, ValueError):
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return (value * sum(pieces) / sample_rate, "card",
                    "the card's gmac_per_second (analytic, counted for 1 s of audio) times the audio run")
    cfg, arch = card.get("config"), card.get("arch")
    if not isinstance(cfg, dict) or not arch:
        return None, None, "unknown: the model card has neither gmac_per_second nor a model config to count"
    try:
        import torch  # noqa: F401  (the count rebuilds the architecture)

        from effifusion.models.registry import build_model
    except ImportError:
        return None, None, ("unknown: the card has no gmac_per_second, and counting its config needs PyTorch "
                            "(pip install \".[pipeline]\" in a clone)")
    try:
        model = build_model({**cfg, "arch": cfg.get("arch", arch)}, sample_rate)
        if isinstance(card.get("sampler"), dict) and model.runtime == "diffusion":
            model.with_sampler(**card["sampler"])  # the export's sampler, which may differ from its config's
    except (EffiFusionError, TypeError, ValueError, KeyError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, None, f"unknown: the card has no gmac_per_second and its config builds no model ({why})"
    built = sum(p.numel() for p in model.parameters())
    held = card.get("params_total")
    if isinstance(held, int) and held != built:
        return None, None, (f"unknown: the card has no gmac_per_second and its config builds {built:,} "
                            f"parameters where the file holds {held:,} (channel-pruned?)")
    macs = sum(c["total"] for c in pieces_macs(model, pieces))
    return (macs / 1e9, "config",
            "analytic count (models/cost.py) of the architecture in the card's config, at this input length")


def file_bytes(path: Path, card: dict[str, Any]) -> int:
    """Bytes of the model's files: the .onnx, and a diffusion export's predictive network beside it."""
    total = path.stat().st_size
    predictive = card.get("predictive_file")
    if predictive and path.with_name(str(predictive)).is_file():
        total += path.with_name(str(predictive)).stat().st_size
    return total


def bench_exported(path: str | os.PathLike, seconds: Any = 2.0, threads: Any = 1,
                   repeats: Any = MODEL_REPEATS, progress: bool = False, profile: bool = False) -> dict[str, Any]:
    """What one inference of the export at ``path`` costs: the row of `effifusion bench --model` (see
    the module docstring). It is measured in a fresh process, so the peak memory is the model's own,
    not the caller's (the evaluate stage holds PyTorch and data). ConfigError for a bad argument or a
    file that is no effifusion export; BenchError, with its last line, when the measuring process fails.
    """
    secs, _, n_threads = check_args(seconds, "onnx", threads)
    n_repeats = check_repeats(repeats)
    path = check_exported(path)
    if progress:
        print(f"effifusion bench: measuring {path}: {secs:g} s, {n_threads} thread(s), "
              f"{n_repeats} run(s) ...", file=sys.stderr, flush=True)
    cmd, env = child_command(path, "onnx", secs, n_threads, repeats=n_repeats, profile=profile)
    child = run_child(cmd, env)
    card, pieces, sr = child["card"], child["pieces"], child["sample_rate"]
    gmacs, source, note = card_gmacs(card, pieces, sr)
    compute_s = statistics.median(child["times"])

    def count(key: str) -> int | None:
        return card[key] if isinstance(card.get(key), int) else None

    return {
        "model": str(path),
        "arch": card.get("arch"),
        "backend": "onnx",
        "runtime": child["runtime"],  # onnxruntime, or openvino-bf16 for a bf16 export
        "threads": n_threads,
        "seconds": secs,
        "sample_rate": sr,
        "repeats": n_repeats,
        "rtf": round(compute_s / secs, 4),
        "compute_s": round(compute_s, 4),
        "times_s": [round(t, 4) for t in child["times"]],
        "gmac_per_s_audio": None if gmacs is None else round(gmacs / secs, 4),
        "gmac_total": None if gmacs is None else round(gmacs, 4),
        "gmac_per_s_achieved": None if gmacs is None else round(gmacs / compute_s, 4),
        "macs_source": source,
        "macs_note": note,
        "peak_rss_mib": round(child["peak_rss_bytes"] / MIB, 1),
        "baseline_rss_mib": round(child["baseline_rss_bytes"] / MIB, 1),
        "params_total": count("params_total"),
        "params_nonzero": count("params_nonzero"),
        "file_bytes": file_bytes(path, card),
        "network_evaluations": card_evaluations(card) * len(pieces),
        "chunked": child["chunked"],
        "piece_s": round(child["piece_s"], 4),
        **cost_fields(gmacs, compute_s, child),
        "platform": platform_info(),
    }


def describe(row: dict[str, Any]) -> str:
    """The human-readable lines of one row."""
    pieces = ("in several pieces, the longest " + f"{row['piece_s']:g} s" if row["chunked"]
              else "in one piece")
    p = row["platform"]
    if "model" in row:  # a given export (bench_exported): its card's counts, its files, the median run
        def n(key: str) -> str:
            return "unknown" if row[key] is None else f"{row[key]:,}"

        model = (f"model       {row['model']} ({row['arch']}, {n('params_total')} parameters, "
                 f"{n('params_nonzero')} non-zero; {row['file_bytes']:,} bytes)")
        timing = f", the median of {row['repeats']} runs" if row["repeats"] > 1 else ""
    else:
        model = (f"model       {row['preset']} ({row['arch']}, {row['params_total']:,} parameters, "
                 "random weights)")
        timing = ""
    macs = (f"MACs        {row['gmac_total']:.2f} GMAC for this input, {row['gmac_per_s_audio']:.2f} GMAC "
            f"per second of audio, {row['gmac_per_s_achieved']:.2f} GMAC/s achieved"
            if row["gmac_total"] is not None else f"MACs        {row['macs_note']}")
    return "\n".join([
        model,
        f"run         {row['backend']}, {row['threads']} thread(s); {row['seconds']:g} s of audio at "
        f"{row['sample_rate']} Hz, enhanced {pieces}",
        f"real time   RTF {row['rtf']:.3f} ({row['compute_s']:.3f} s of compute for {row['seconds']:g} s "
        f"of audio{timing})",
        *([f"sampler     {row['network_evaluations']} network evaluations "
           f"({row['compute_s'] / row['network_evaluations']:.3f} s each)"]
          if row.get("network_evaluations", 1) > 1 else []),
        macs,
        *([f"precision   {row['precision']}: {row['time_ratio_to_fp32']:.3f} x fp32's time (fp32 "
           f"{row['fp32_compute_s']:.3f} s, the same sitting)"] if "time_ratio_to_fp32" in row else []),
        efficiency_line(row),
        f"memory      peak RSS {row['peak_rss_mib']:.0f} MiB ({row['baseline_rss_mib']:.0f} MiB with the model "
        "loaded, before the run)",
        f"platform    Python {p['python']}, onnxruntime {p['onnxruntime']}, torch {p['torch']}; {p['cpu']}; "
        f"{', '.join(p['cpu_features']) or 'no vector features listed'}",
        *profile_lines(row.get("profile_top")),
    ])


def efficiency_line(row: dict[str, Any]) -> str:
    gemm = (f"{row['gemm_gflops']:.1f} GFLOP/s, this CPU's fp32 GEMM rate on {row['threads']} thread(s)\n"
            f"            ({row['gemm_source']})")
    if row["efficiency"] is None:
        return f"efficiency  unknown (no MAC count); {gemm}"
    return (f"efficiency  {100 * row['efficiency']:.1f} %: {row['gflops_achieved']:.1f} GFLOP/s achieved (2 FLOPs "
            f"per MAC) of {gemm}")


def profile_lines(top: list[dict[str, Any]] | None) -> list[str]:
    """The profile's operators as aligned lines (op type, nodes, ms per run, share, GFLOP/s)."""
    if not top:
        return []
    lines = ["profile     ONNX Runtime's operators by time (per timed run):",
             f"            {'operator':<24} {'nodes':>6} {'ms':>10} {'share':>7} {'GFLOP/s':>8}"]
    for r in top:
        rate = "" if r["gflops"] is None else f"{r['gflops']:.1f}"
        lines.append(f"            {r['op']:<24} {r['nodes']:>6} {r['ms']:>10.1f} {100 * r['share']:>6.1f}% {rate:>8}")
    return lines


# ---------------------------------------------------------------------------------------------
# Child: one measurement in this process


def rss_bytes() -> int:
    """Resident size now (Linux /proc; psutil elsewhere; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident size of this process: Linux's VmHWM, else ru_maxrss (KiB on Linux, bytes on macOS).

    Linux keeps ru_maxrss across fork and exec, so a child started by a large process (the evaluate
    stage, torch loaded) would report its parent's size; VmHWM belongs to the new program's memory only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model, warm up, time ``enhance`` (or ``enhance_long`` above ``chunk_s``)."""
    from effifusion.dsp.signals import parity_signal  # torch-free: an ONNX measurement holds no torch
    from effifusion.inference.backends import load_enhancer
    from effifusion.runtime.cost import GEMM_REPEATS, gemm_gflops, gemm_source, profile_top
    from effifusion.runtime.processing import MAX_PIECE_S

    if args.backend == "pytorch":
        import torch

        torch.set_num_interop_threads(1)
    # the CPU's GEMM rate, before the model is loaded (so its matrices do not raise the run's peak) and
    # again after the run: the best of both, against noise from other work on the machine
    gemm = gemm_gflops(repeats=GEMM_REPEATS)
    profile_dir = tempfile.TemporaryDirectory(prefix="effifusion-profile-") if args.profile else None
    enhancer = load_enhancer(args.model, threads=args.threads,
                             profile=str(Path(profile_dir.name) / "ort") if profile_dir else None)
    session_runs = 0
    if profile_dir is not None and enhancer.session is not None:  # count the warm-up's runs, to skip them
        session_run = enhancer.session.run

        def counted_run(*a: Any, **kw: Any) -> Any:
            nonlocal session_runs
            session_runs += 1
            return session_run(*a, **kw)

        enhancer.session.run = counted_run
    sr = enhancer.sample_rate
    n = int(round(args.seconds * sr))
    x = parity_signal(n, sr, seed=SIGNAL_SEED)

    pieces: list[int] = []  # samples of each piece the runtime was given
    run_batch = getattr(enhancer, "_run_batch", None)
    if callable(run_batch):
        def recording(batch: Any) -> Any:
            pieces.append(int(batch.shape[-1]))
            return run_batch(batch)

        enhancer._run_batch = recording
    chunk_s = args.chunk_s
    long_input = chunk_s is not None and args.seconds > chunk_s

    def run() -> None:
        if long_input:
            enhancer.enhance_long(x, chunk_s, args.overlap_s)
        elif args.seconds > MAX_PIECE_S:  # as `effifusion enhance` would: pieces of MAX_PIECE_S
            enhancer.enhance(x)
        else:  # the model itself on one piece, as evaluate runs it (no resampling or blending around it)
            enhancer.enhance_segment(x)

    baseline = rss_bytes()
    enhancer.enhance_segment(x[: max(1, int(round(min(args.seconds, args.warmup_s) * sr)))])
    warmup_runs = session_runs
    times = []
    for _ in range(args.repeats):
        pieces.clear()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = peak_rss_bytes()
    gemm = max(gemm, gemm_gflops(repeats=GEMM_REPEATS))
    top = None
    if profile_dir is not None:
        if enhancer.session is None:
            raise EffiFusionError("--profile: this model does not run in ONNX Runtime")
        top = profile_top(enhancer.session.end_profiling(), skip_runs=warmup_runs, top=PROFILE_TOP)
        profile_dir.cleanup()

    limit = getattr(enhancer, "max_piece_s", None)  # an enhancer that cuts long inputs itself
    if not pieces:  # no batch runner to watch: infer the pieces from the enhancer's limit
        if long_input:
            from effifusion.dsp.streaming import ChunkedStream, chunk_geometry

            chunk, overlap = chunk_geometry(chunk_s, args.overlap_s, sr)
            pieces = [chunk] * ChunkedStream.count_chunks(n, chunk, overlap)
        elif limit and args.seconds > limit:
            k = math.ceil(args.seconds / limit)
            pieces = [math.ceil(n / k)] * k
        else:
            pieces = [n]
    return {"compute_s": min(times), "times": times, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "pieces": pieces, "chunked": len(pieces) > 1 or max(pieces) < n, "piece_s": max(pieces) / sr,
            "max_piece_s": limit, "sample_rate": sr, "runtime": enhancer.backend, "card": enhancer.card,
            "gemm_gflops": gemm, "gemm_source": gemm_source(), "profile_top": top}


def child_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m effifusion.inference.bench",
                                description="one measurement of `effifusion bench` (its child process)")
    p.add_argument("--child", dest="model", required=True, help="model file (.onnx or .pt)")
    p.add_argument("--backend", choices=tuple(BACKENDS), required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--chunk-s", type=float, default=None)
    p.add_argument("--overlap-s", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup-s", type=float, default=WARMUP_S)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    try:
        row = child(args)
    except EffiFusionError as exc:
        print(f"effifusion bench: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
