"""An exported model in ONNX Runtime, and its model card: what enhancing needs, without torch.

The exporter (export.py, torch) writes the graph and the card; this module reads them. The card
lives in the ONNX file's ``metadata_props`` (strings; ``onnx.load(f).metadata_props`` or ONNX
Runtime's ``session.get_modelmeta().custom_metadata_map``), so a model file is self-describing:
the enhancer needs no params.yaml. Keys (CARD_KEYS says what each means):

==================== ========================================================================
input_name           ``wav``: float32 waveform [batch, samples], mono, at ``sample_rate``
output_name          ``enhanced``: float32 [batch, samples], the same length
sample_rate          the rate the model works at (16000); other rates are resampled around it
normalisation        how the graph scales its input (``rms``: per utterance, undone at the end)
min_samples          shorter inputs are zero-padded inside the graph (any N >= 1 works)
segment_samples      0, or the segment length the runtime cuts utterances into (``segments``)
memory_mb_per_s      peak ONNX Runtime memory per second of input (``unmeasured`` until measured)
arch, config         the architecture and its settings (JSON: the params.yaml ``model`` section)
params_total, ...    parameter count, non-zero parameters, sparsity
gmac_per_second      analytic GMACs of 1 s of audio at the exported layer widths
pruned_widths        channel-pruned exports: the shrunk layers' widths (JSON; config is the dense model)
n_fft, hop_length... the STFT front end
exporter, source     how and from which checkpoint the file was made
==================== ========================================================================
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from effifusion.core.errors import ConfigError

INPUT_NAME = "wav"
OUTPUT_NAME = "enhanced"
SHAPE = "[batch, samples] float32"
NORMALISATION_TEXT = {
    "rms": "rms: inside the graph, each waveform is scaled by g = sqrt(N / (sum x^2 + 1e-12)) (unit RMS) "
           "before the network and the output divided by g: the input's level does not matter, one gain "
           "per piece enhanced",
    "none": "none: the waveform goes to the network as it is",
    "segments": "segments (MUSE's protocol, outside the graph): the runtime scales the utterance by "
                "g = sqrt(N / (sum x^2 + 1e-12)), feeds the graph segments of segment_samples (the last taken "
                "from the end, a shorter utterance zero-padded), joins them and divides by g; the graph itself "
                "does not normalise",
}
# What each card key means, in the order `effifusion enhance --info` prints them (``pruned_widths``,
# which only a channel-pruned export has, comes after them).
CARD_KEYS = {
    "arch": "architecture (effifusion/models/<arch>)",
    "input_name": "input tensor",
    "input_shape": "input shape and type (mono waveforms)",
    "output_name": "output tensor",
    "output_shape": "output shape and type (same length as the input)",
    "sample_rate": "sample rate in Hz",
    "normalisation": "input normalisation",
    "min_samples": "inputs shorter than this are zero-padded inside the graph",
    "segment_samples": "0: whole inputs; else the segment length of the normalisation above",
    "memory_mb_per_s": "peak ONNX Runtime memory per second of input, MB",
    "params_total": "parameters",
    "params_nonzero": "non-zero parameters (after pruning)",
    "sparsity": "fraction of parameters that are zero",
    "gmac_per_second": "analytic GMACs per second of audio (the exported, possibly channel-pruned, widths)",
    "config": "architecture settings (the params.yaml model section, JSON)",
    "n_fft": "STFT size", "hop_length": "STFT hop", "win_length": "STFT window",
    "compress_factor": "magnitude compression exponent",
    "effifusion_version": "package version that exported it",
    "exporter": "exporter", "source": "checkpoint it was exported from",
}


def onnx_session(path: Path, threads: int | None = None, profile: str | None = None) -> Any:
    """A CPU ONNX Runtime session for ``path``; ``profile``: a file prefix, to run ONNX Runtime's profiler
    (``session.end_profiling()`` then writes its JSON, see runtime/cost.py ``profile_top``).

    The memory-pattern planner is off: with attention scores of 1.6 GB per tensor at 10 s it doubled
    peak memory (16.6 GB instead of 8.4 GB for a 10 s input, demo model); keeping the arena on makes
    repeated same-size chunks 3x faster than without it (measured, 2 threads). A file ONNX Runtime
    cannot load is a ConfigError naming it. ``threads`` None: ``OMP_NUM_THREADS`` when it is set (as torch
    and numpy honour it; ONNX Runtime itself does not read it), else ONNX Runtime's default (every core).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_mem_pattern = False
    threads = threads or _omp_threads()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        raise ConfigError(f"{path}: not a loadable ONNX model ({_ort_problem(exc, path)})") from None


def _omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive int, or None when unset or not one."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _ort_problem(exc: Exception, path: Path) -> str:
    """ONNX Runtime's message without its code prefix and the path it repeats."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = text.replace(f"Load model from {path} failed:", "").strip()
    return text[:300] or type(exc).__name__


def model_card(metadata: dict[str, str]) -> dict[str, Any]:
    """The card of an export from its metadata strings: CARD_KEYS first (numbers and JSON decoded),
    then any other key as written. Exports made before a key existed simply lack it."""
    card: dict[str, Any] = {}
    for key in [*CARD_KEYS, *sorted(set(metadata) - set(CARD_KEYS))]:
        if key not in metadata:
            continue
        value: Any = metadata[key]
        if key in ("config", "pruned_widths"):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif key in ("sample_rate", "min_samples", "segment_samples", "params_total", "params_nonzero", "n_fft",
                     "hop_length", "win_length") and value.isdigit():
            value = int(value)
        else:
            try:
                floats = ("sparsity", "compress_factor", "memory_mb_per_s", "gmac_per_second")
                value = float(value) if key in floats else value
            except ValueError:
                pass
        card[key] = value
    return card
