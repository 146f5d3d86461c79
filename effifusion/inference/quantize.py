"""Reduced-precision exports (``export.precision``): an int8 model written beside the fp32 one.

int8 is ONNX Runtime's static quantization in QDQ form (``quantize_static``, ``QuantFormat.QDQ``):
per-channel int8 weights, uint8 activations with ranges calibrated (min/max) on noisy audio that is
never the scored set:

- the pipeline's export stage: a few utterances of ``data/prepared/train`` (``calibration_from_dir``);
- ``effifusion pretrained muse --precision int8``: ``--calibration DIR`` (its WAV files), or by default a
  few noisy utterances of the built-in demo corpus generated on the fly (pretrained.demo_calibration);
- ``effifusion bench --precision int8`` (random weights, speed only): parity signals (dsp/signals.py).

Calibration feeds the graph what the enhancer feeds it: whole utterances, or for a segmenting model
(MUSE) the utterance's RMS-normalised segments. Only the operators in ``OP_TYPES`` are quantized, and
depthwise convolutions and the STFT (a convolution with the DFT bases) are left in fp32: measured per
operator type on this project's models (docs/benchmarks.md, 2026-12-03), ONNX Runtime's QLinearConv is
slower than fp32 on depthwise convolutions, and an 8-bit spectrum cost the demo model 0.43 PESQ. **No
configuration measured met the bar of ≤ 0.55× fp32's time** (the paper-size model in int8 takes 1.00×
at 2 s, 1.05× at 10 s; MUSE loses 0.46 PESQ), so int8 is an option, not a default.

bf16 (``write_bf16``) is the fp32 graph written again as ``<stem>.bf16.onnx`` with ``precision: bf16`` on its
card: ONNX Runtime's CPU provider has no bf16 kernels (and ONNX's Conv no bf16 type), so the enhancer runs
that file in OpenVINO with bf16 inference precision (runtime/openvino_model.py; AVX512-BF16 or AMX-BF16).
Measured (docs/benchmarks.md, 2026-12-03): the paper-size model at 0.40-0.49x ONNX Runtime fp32's time at
2 s and 0.50-0.71x at 10 s (attention with 16-wide heads gains nothing in bf16), MUSE's pretrained model
at 0.75x per segment with +0.005 PESQ over the 25 fixture pairs. Diffusion models stay fp32.

The int8 file's model card is the fp32 card plus ``precision``, ``fp32_file`` (the fallback on a CPU
without VNNI, runtime/precision.py), ``quantized_ops`` and ``calibration``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.core.files import atomic_path
from effifusion.runtime.precision import PRECISIONS, precision_file

OP_TYPES = ("Conv", "MatMul")  # quantized (depthwise convolutions excluded: DEPTHWISE_INT8)
DEPTHWISE_INT8 = False
CALIBRATION_UTTERANCES = 6
CALIBRATION_MAX_S = 3.0  # longer utterances are cut: calibration keeps every tensor of each run in memory


def check_precision(precision: str) -> str:
    """``precision`` if a model of it can be written; ConfigError otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: unknown (known: {', '.join(PRECISIONS)})")
    return precision


def fp32_export(fp32_path: Path, precision: str) -> tuple[Any, dict[str, str]]:
    """The fp32 export at ``fp32_path`` (ModelProto) and its card's strings; ConfigError for a diffusion
    model or an export that is not fp32, which no ``precision`` model is made from."""
    import onnx

    model = onnx.load(str(fp32_path))
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("runtime") == "diffusion":
        raise ConfigError(f"{fp32_path}: {precision} export of a diffusion model is not supported (fp32 only)")
    if meta.get("precision", "fp32") != "fp32":
        raise ConfigError(f"{fp32_path}: already {meta['precision']}; make {precision} from its fp32 model")
    return model, meta


def write_bf16(fp32_path: str | Path, out_path: str | Path | None = None) -> dict[str, Any]:
    """Write the bf16 model of the fp32 export ``fp32_path`` to ``out_path`` (default: beside it,
    ``<stem>.bf16.onnx``): the same graph, its card gaining ``precision: bf16``, ``fp32_file`` and
    ``engine``; return its report."""
    import onnx

    from effifusion.inference.onnx_graph import set_card

    fp32_path = Path(fp32_path)
    out_path = precision_file(fp32_path, "bf16") if out_path is None else Path(out_path)
    model, meta = fp32_export(fp32_path, "bf16")
    card = {**meta, "precision": "bf16", "fp32_file": fp32_path.name,
            "engine": "OpenVINO CPU, INFERENCE_PRECISION_HINT bf16 (the graph itself is fp32)"}
    set_card(model, card)
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp))
    return {"precision": "bf16", "onnx_file": str(out_path), "onnx_bytes": out_path.stat().st_size,
            "fp32_file": str(fp32_path), "engine": card["engine"]}


# ---------------------------------------------------------------------------------------------
# Calibration audio


def _crop(x: np.ndarray, sample_rate: int, max_s: float) -> np.ndarray:
    n = int(max_s * sample_rate)
    if len(x) <= n:
        return x
    start = (len(x) - n) // 2
    return x[start:start + n]


def calibration_from_dir(folder: str | Path, sample_rate: int, count: int | None = None,
                         max_s: float = CALIBRATION_MAX_S) -> list[np.ndarray]:
    """``count`` noisy utterances from ``folder`` (its ``noisy/`` subfolder when it has one, e.g.
    data/prepared/train): WAV files in name order, evenly spread, resampled to ``sample_rate``, each cut
    to its middle ``max_s`` seconds."""
    from effifusion.dsp.audio import read_wav

    count = count or CALIBRATION_UTTERANCES
    folder = Path(folder)
    if (folder / "noisy").is_dir():
        folder = folder / "noisy"
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise ConfigError(f"{folder}: no .wav files to calibrate the int8 model on")
    picks = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(count, len(files)))})
    return [_crop(read_wav(files[i], sample_rate=sample_rate)[0], sample_rate, max_s) for i in picks]


def graph_inputs(card: dict[str, Any], utterances: Iterable[np.ndarray]) -> list[np.ndarray]:
    """What the enhancer feeds the graph for each utterance ([1, N] float32): the utterance itself, or for a
    segmenting model (card ``segment_samples``) its RMS-normalised segments, as runtime/enhancer.py cuts them."""
    from effifusion.dsp.segments import enhance_in_segments

    segment = int(card.get("segment_samples") or 0)
    batches: list[np.ndarray] = []
    for wav in utterances:
        x = np.asarray(wav, dtype=np.float32)[None]
        if not segment:
            batches.append(x)
            continue
        gain = np.sqrt(x.shape[-1] / (np.sum(np.square(x), axis=-1, keepdims=True) + np.float32(1e-12)))

        def keep(seg: np.ndarray) -> np.ndarray:
            batches.extend(np.ascontiguousarray(s[None], dtype=np.float32) for s in seg)
            return seg

        enhance_in_segments(keep, x * gain, segment, concat=np.concatenate,
                            pad=lambda a, k: np.pad(a, ((0, 0), (0, k))))
    return batches


# ---------------------------------------------------------------------------------------------
# int8


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def kept_in_fp32(model: Any, card: dict[str, Any], depthwise: bool) -> list[str]:
    """Names of the Conv nodes left in fp32: the front end's STFT (a convolution with the DFT bases, kernel
    n_fft: an 8-bit spectrum loses the quiet bins) and, unless ``depthwise``, the depthwise convolutions."""
    frame = {int(card.get(k) or 0) for k in ("n_fft", "win_length")} - {0}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        kernel = list(_attribute(node, "kernel_shape", []))
        if (len(kernel) == 1 and kernel[0] in frame) or (not depthwise and _attribute(node, "group", 1) > 1):
            names.append(node.name)
    return names


def quantize_int8(fp32_path: str | Path, out_path: str | Path | None = None, calibration: Iterable[np.ndarray] = (),
                  calibration_source: str = "", op_types: tuple[str, ...] = OP_TYPES,
                  depthwise: bool = DEPTHWISE_INT8) -> dict[str, Any]:
    """Write the int8 QDQ model of the fp32 export ``fp32_path`` to ``out_path`` (default: beside it,
    ``<stem>.int8.onnx``), calibrated on ``calibration`` (noisy utterances at the model's rate); return
    its report (file, bytes, quantized node counts, seconds)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from effifusion.inference.onnx_graph import set_card
    from effifusion.runtime.onnx_model import INPUT_NAME, model_card

    start = time.perf_counter()
    fp32_path = Path(fp32_path)
    out_path = precision_file(fp32_path, "int8") if out_path is None else Path(out_path)
    _, meta = fp32_export(fp32_path, "int8")
    batches = graph_inputs(model_card(meta), calibration)
    if not batches:
        raise ConfigError(f"{fp32_path}: no calibration audio for the int8 model")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {INPUT_NAME: x}

    with tempfile.TemporaryDirectory(prefix="effifusion-int8-") as tmp, atomic_path(out_path) as out_tmp:
        # constant folding first: the exporter's weights reach Conv/MatMul through Identity/Cast nodes, and a
        # weight that is not an initializer would be quantized per tensor, as an activation, on every run
        folded = Path(tmp) / "folded.onnx"
        quant_pre_process(str(fp32_path), str(folded), skip_onnx_shape=True, skip_symbolic_shape=True)
        graph = onnx.load(str(folded))
        # the exporter's shape annotations give tensors of different sizes one symbolic dimension (MUSE's
        # SequenceAt outputs): as calibration outputs they would fail ONNX Runtime's shape check
        del graph.graph.value_info[:]
        onnx.save_model(graph, str(folded))
        excluded = kept_in_fp32(graph, model_card(meta), depthwise)
        quantize_static(str(folded), str(Path(tmp) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types), nodes_to_exclude=excluded,
                        calibrate_method=CalibrationMethod.MinMax)
        q = onnx.load(str(Path(tmp) / "q.onnx"))
        card = {**meta, "precision": "int8", "fp32_file": fp32_path.name,
                "quantized_ops": json.dumps({"op_types": list(op_types), "depthwise": depthwise}),
                "calibration": f"{len(batches)} graph inputs: {calibration_source or 'given audio'}"}
        del q.graph.value_info[:]  # shapes inferred for the calibration inputs' batch must not bind other batches
        onnx.save_model(set_card(q, card), str(out_tmp))
    counts = {op: sum(n.op_type == op for n in q.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    return {"precision": "int8", "onnx_file": str(out_path), "onnx_bytes": out_path.stat().st_size,
            "fp32_file": str(fp32_path), "quantized_op_types": list(op_types), "kept_in_fp32": len(excluded),
            "quantize_nodes": counts["QuantizeLinear"], "dequantize_nodes": counts["DequantizeLinear"],
            "calibration": card["calibration"], "seconds": round(time.perf_counter() - start, 2)}


def write_precision(fp32_path: str | Path, precision: str, calibration: Any,
                    calibration_source: str = "") -> dict[str, Any] | None:
    """The ``precision`` model beside the fp32 export ``fp32_path`` (None for fp32: nothing to write).
    ``calibration``: the utterances, or a callable returning them (called only when a model is written)."""
    check_precision(precision)
    if precision == "fp32":
        return None
    if precision == "bf16":  # no calibration: the same graph, run in bf16
        return write_bf16(fp32_path)
    audio = calibration() if callable(calibration) else calibration
    return quantize_int8(fp32_path, calibration=audio, calibration_source=calibration_source)


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def export_precision(fp32_report: dict[str, Any], precision: str, calibration_dir: str | Path, sample_rate: int
                     ) -> tuple[dict[str, Any], str] | None:
    """The export stage's reduced-precision model: ``<variant>.<precision>.onnx`` beside the fp32 export of
    ``fp32_report``, int8 calibrated on ``calibration_dir`` (data/prepared/train), with its report
    ``<variant>.<precision>.export.json``. Returns (report, how: "quantized" | "written" (bf16) | "reused"),
    None for fp32. Reused when the fp32 file, this module (and for int8 the calibration files and
    onnxruntime) are the same."""
    from importlib import metadata

    from effifusion.core.files import write_json
    from effifusion.inference.onnx_graph import report_file

    check_precision(precision)
    if precision == "fp32":
        return None
    fp32 = Path(fp32_report["onnx_file"])
    out = precision_file(fp32, precision)
    folder = Path(calibration_dir)
    key: dict[str, Any] = {"fp32_md5": _md5(fp32), "code": _md5(Path(__file__))}
    if precision == "int8":  # what the calibration read, and the quantizer
        noisy = folder / "noisy" if (folder / "noisy").is_dir() else folder
        names = sorted(p.name for p in noisy.glob("*.wav"))
        key = {"fp32_md5": key["fp32_md5"], "calibration": {"dir": str(folder), "files": len(names),
                                                            "names_md5": _md5_text("\n".join(names))},
               "code": key["code"], "onnxruntime": metadata.version("onnxruntime")}
    report_path = out.with_name(report_file(out.name))
    try:
        old = json.loads(report_path.read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and old.get("key") == key and out.is_file():
        return old, "reused"
    if precision == "bf16":
        report, how = write_bf16(fp32, out), "written"
    else:
        report, how = quantize_int8(fp32, out, calibration_from_dir(folder, sample_rate),
                                    calibration_source=str(folder)), "quantized"
    report = {**{k: v for k, v in report.items() if k != "seconds"}, "key": key}
    write_json(report_path, report)  # no timing in the output: a rerun writes the same bytes
    return report, how


def _md5_text(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# `effifusion bench --precision`

BENCH_ROUNDS = 2  # fp32 and the reduced model measured alternately, each in a fresh process; fastest kept


def bench_precision(prepared: Any, precision: str, seconds: float, threads: int, measure: Any,
                    progress: bool = True) -> dict[str, Any]:
    """`effifusion bench --precision int8`: quantize the prepared fp32 export (not timed; calibrated on
    parity signals: the weights are random, only the speed is measured), then measure fp32 and int8
    alternately, BENCH_ROUNDS times each, every run in a fresh process (``measure``: bench.measure). The
    row is the reduced model's fastest, with ``precision``, ``fp32_compute_s`` (the fp32 export's fastest in
    the same sitting), ``time_ratio_to_fp32`` and the quantization report."""
    import sys
    from dataclasses import replace

    check_precision(precision)
    if precision == "fp32":
        return {**measure(prepared, "onnx", seconds, threads), "precision": "fp32"}
    if progress:
        print(f"effifusion bench: writing the {precision} model (not timed) ...", file=sys.stderr, flush=True)
    if precision == "bf16":
        report = write_bf16(prepared.onnx)
    else:
        from effifusion.dsp.signals import parity_signal

        sr = prepared.model.sample_rate
        audio = [parity_signal(2 * sr, sr, seed=seed) for seed in range(min(2, CALIBRATION_UTTERANCES))]
        report = quantize_int8(prepared.onnx, calibration=audio, calibration_source="parity signals (bench)")
    reduced = replace(prepared, onnx=Path(report["onnx_file"]))
    rows: dict[str, list[dict[str, Any]]] = {"fp32": [], precision: []}
    for _ in range(BENCH_ROUNDS):
        for name, p in (("fp32", prepared), (precision, reduced)):
            if progress:
                print(f"effifusion bench: measuring {seconds:g} s, {name}, {threads} thread(s) ...",
                      file=sys.stderr, flush=True)
            rows[name].append(measure(p, "onnx", seconds, threads))
    best = {name: min(r, key=lambda row: row["compute_s"]) for name, r in rows.items()}
    fp32_s = best["fp32"]["compute_s"]
    return {**best[precision], "precision": precision, "fp32_compute_s": fp32_s,
            "time_ratio_to_fp32": round(best[precision]["compute_s"] / fp32_s, 4),
            "rounds": BENCH_ROUNDS, "quantization": {k: v for k, v in report.items() if k != "onnx_file"}}
