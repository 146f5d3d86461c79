"""ONNX export of a model's whole waveform-to-waveform enhancer (docs/reference.md §3, §8).

What is exported is the model's ``export_module()`` (by default its ``enhance``: normalisation, STFT,
network, inverse STFT, all in the graph; the front end switches to DFT bases while exporting, see
dsp/stft.py), so the file holds only the model's weights and its compressed size shows sparsity.

Exporter: torch.onnx's dynamo exporter (torch.export), with onnxscript's graph optimizer OFF:
its rewrite rules treat an added constant |c| < 1e-8 as zero and delete the front end's
``+ 1e-9`` / ``+ 1e-10`` / ``+ 1e-12`` epsilons, which flips the phase of exactly-real bins from
+π to −π and turns the RMS gain of silence into a division by zero. ONNX Runtime still applies
its own graph optimisations when the session is created.

The graph is written for ONNX Runtime's CPU kernels (issue 22): attention as its contrib
``com.microsoft.MultiHeadAttention`` (a flash-attention kernel: models/attention.py ``fused_attention``)
and a few layers in faster forms of the same function (models/onnx_forms.py ``export_forms``: PReLU as
max(x, slope·x), the conformer's GLU and depthwise conv, the ½ of its feed-forward modules). A runtime
without ONNX Runtime's contrib operators cannot read it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from effifusion.core.errors import ConfigError
from effifusion.core.files import atomic_path
from effifusion.core.settings import AudioConfig, ExportConfig, as_settings
from effifusion.dsp.signals import parity_signal  # noqa: F401 (re-exported)
from effifusion.dsp.stft import dft_transforms
from effifusion.inference.onnx_graph import (  # noqa: F401 (re-exported)
    EXPORTER,
    MIN_OPSET,
    ExportError,
    finished,
    quiet_exporter,
    report_file,
    set_card,
    zip_size,
)
from effifusion.models.attention import fused_attention, mha_translation
from effifusion.models.base import EnhancementModel
from effifusion.models.onnx_forms import export_forms
from effifusion.models.registry import load_checkpoint
from effifusion.runtime.onnx_model import (  # noqa: F401 (re-exported: the enhancer reads them from onnx_model)
    INPUT_NAME,
    NORMALISATION_TEXT,
    OUTPUT_NAME,
    SHAPE,
    onnx_session,
)

# One file scheme for every model variant: models/onnx/<variant>.onnx (a diffusion model's predictive network
# beside it as <variant>.predictive.onnx) and its export report <variant>.export.json.
VARIANTS = ("dense", "pruned")
ONNX_FILE = "pruned.onnx"  # what `effifusion enhance` runs by default
LEGACY_ONNX_FILE = "effifusion.onnx"  # the single export of earlier versions: still loads when given


def variant_file(variant: str) -> str:
    return f"{variant}.onnx"


REPORT_FILE = report_file(ONNX_FILE)
# Peak ONNX Runtime memory per second of input (MB), for the model card's memory_mb_per_s: set from a
# measurement (bench/bench_infer.py) once attention runs in bounded memory; None writes "unmeasured".
MEMORY_MB_PER_S: float | None = None


# ---------------------------------------------------------------------------------------------
# Export


def export_graph(model: EnhancementModel, opset: int) -> Any:
    """The model's export module as an ONNX ModelProto (dynamo exporter; dynamic batch and length axes).

    The example batch is 2 and the batch axis declared >= 2: torch.export otherwise specialises the
    CPU convolution backend choice to batch 1. The exported graph itself has no such limit
    (ONNX Runtime runs batch 1 fine; the parity check does exactly that). A segmenting model (MUSE) is
    only ever fed whole segments (the runtime cuts and pads them), so its length axis is static:
    tracing without a symbolic length takes about half the time (paper MUSE: 45 s against 81 s).
    """
    wrapper = model.export_module().eval()
    sr, segment = model.sample_rate, model.frontend.segment_samples
    example = torch.from_numpy(np.stack([parity_signal(segment or sr, sr, seed) for seed in (1, 2)]))
    dims = {0: torch.export.Dim("batch", min=2, max=4096), 1: None if segment else torch.export.Dim("samples", min=1)}
    with quiet_exporter(), torch.no_grad(), dft_transforms(), fused_attention(), export_forms(wrapper):
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, optimize=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes={"wav": dims},
            verbose=False, custom_translation_table=mha_translation(),
        )
    return finished(program.model_proto)


def _cost_card(model: EnhancementModel) -> dict[str, str]:
    """Card entries of the network actually exported: ``gmac_per_second``, the analytic MACs of 1 s of
    audio (models/cost.py reads each layer's widths from the module, so a channel-pruned model counts
    its smaller layers), and ``pruned_widths`` (JSON) when the config alone describes a larger network."""
    from effifusion.models.cost import frames_for
    from effifusion.models.widths import WIDTHS_KEY

    card = {}
    try:
        macs = model.macs(frames_for(1.0, model.sample_rate, model.frontend.hop_length))["total"]
        card["gmac_per_second"] = f"{macs / 1e9:.6f}"
    except NotImplementedError:  # an architecture without a MAC count: the card says nothing
        pass
    if getattr(model, WIDTHS_KEY, None):
        card[WIDTHS_KEY] = json.dumps(getattr(model, WIDTHS_KEY), sort_keys=True)
    return card


def onnx_model(model: EnhancementModel, opset: int, source: str = "") -> Any:
    """The exported graph with its model card in ``metadata_props`` (onnx_model.CARD_KEYS: tensor names
    and shapes, sample rate, normalisation, memory per second, architecture, its config and parameter
    counts, front end, exporter, source checkpoint). Not yet checked against PyTorch: see export_onnx."""
    from effifusion import __version__

    model_proto = export_graph(model, opset)
    params_total = sum(p.numel() for p in model.parameters())
    params_nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    segment = model.frontend.segment_samples
    normalisation = "segments" if segment else model.frontend.normalisation
    shape = f"[batch, {segment}] float32" if segment else SHAPE  # a segmenting graph takes whole segments
    props = {"arch": model.arch, "input_name": INPUT_NAME, "input_shape": shape, "output_name": OUTPUT_NAME,
             "output_shape": shape, "sample_rate": str(model.sample_rate),
             "normalisation": NORMALISATION_TEXT.get(normalisation, normalisation),
             "segment_samples": str(segment),
             "min_samples": str(model.min_samples),
             "memory_mb_per_s": "unmeasured" if MEMORY_MB_PER_S is None else f"{MEMORY_MB_PER_S:g}",
             "params_total": str(params_total), "params_nonzero": str(params_nonzero),
             "sparsity": f"{1.0 - params_nonzero / params_total:.6f}" if params_total else "0",
             **_cost_card(model),
             "config": json.dumps(model.config()),
             **{k: str(v) for k, v in model.frontend.config().items()},
             "effifusion_version": __version__, "exporter": EXPORTER, "source": source}
    set_card(model_proto, props)
    model_proto.producer_name = "effifusion"
    return model_proto


def check_parity(onnx_path: Path, model: EnhancementModel, lengths_s: list[float], sample_rate: int
                 ) -> dict[str, float]:
    """Max |ONNX Runtime − model.enhance| of the waveform for each length (key: seconds as text).

    The export runs as the enhancer runs it (``Enhancer.enhance_segment``: for a segmenting model the
    utterance gain and segment plan are applied around the graph). A front end with ``exact_polar``
    (MUSE) takes the phase of reflected frames as its FFT rounded it, so the graph (DFT by convolution)
    is compared with the model on the same DFT path; ``polar_rounding_max_abs`` reports how far
    torch.stft's rounding moves that model's output.
    """
    from effifusion.runtime.enhancer import onnx_enhancer

    enhancer = onnx_enhancer(Path(onnx_path), threads=None)
    diffs: dict[str, float] = {}
    for i, seconds in enumerate(lengths_s):
        x = parity_signal(max(1, int(round(seconds * sample_rate))), sample_rate, seed=10 + i)
        with torch.inference_mode(), (dft_transforms() if model.frontend.exact_polar else contextlib.nullcontext()):
            expected = model.enhance(torch.from_numpy(x)[None]).numpy()[0]
        got = enhancer.enhance_segment(x)
        if got.shape != expected.shape:
            raise ExportError(f"{onnx_path}: output shape {got.shape} for input {x.shape}, "
                              f"expected {expected.shape}")
        diffs[f"{seconds:g}"] = float(np.max(np.abs(got - expected)))
    return diffs


def polar_rounding_effect(model: EnhancementModel, seconds: float, sample_rate: int) -> float:
    """Max |enhance with torch.stft − enhance with the DFT path| on one parity signal: what FFT rounding
    of reflected frames' phase does to an ``exact_polar`` model (0 for the others by construction)."""
    x = torch.from_numpy(parity_signal(max(1, int(round(seconds * sample_rate))), sample_rate, seed=99))[None]
    with torch.inference_mode():
        a = model.enhance(x)
        with dft_transforms():
            b = model.enhance(x)
    return float((a - b).abs().max())


def _check_sample_rate(checkpoint: Path, model: EnhancementModel, audio: AudioConfig) -> None:
    if model.sample_rate != audio.sample_rate:
        raise ConfigError(f"{checkpoint}: trained at {model.sample_rate} Hz, but params.yaml has audio.sample_rate = "
                          f"{audio.sample_rate!r} (retrain or restore it)")


def export_onnx(checkpoint: Path, out_dir: Path, export: ExportConfig, audio: AudioConfig, name: str = ONNX_FILE,
                val_items: Callable[[], list] | None = None) -> dict[str, Any]:
    """Export the model at ``checkpoint`` to ``out_dir/name`` (pruned.onnx); return the report.

    Pruning masks are folded into plain weights by ``load_checkpoint``, so each weight is stored once.
    The graph is checked (onnx.checker, full) and run in ONNX Runtime against the model's ``enhance``
    at each of ``export.parity_lengths_s`` before it replaces any previous file; a difference
    above ``parity_tolerance`` raises ExportError with the numbers. ``out_dir/<name>.export.json`` gets the report.
    """
    import onnx

    from effifusion.core.files import write_json

    opset, lengths_s, tolerance = export.opset, export.parity_lengths_s, export.parity_tolerance
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    start = time.perf_counter()
    model, _ = load_checkpoint(checkpoint)
    _check_sample_rate(checkpoint, model, audio)
    sample_rate = model.sample_rate
    overrides = export.sampler
    if overrides and model.runtime != "diffusion":
        raise ConfigError(f"params.yaml export.sampler: {model.arch} has no sampler (only the diffusion models "
                          "sgmse and gp_sgmse do): leave it empty ({})")
    if model.exporter == "networks":  # a diffusion model: its networks, the sampler stays outside
        from effifusion.inference.diffusion_export import export_diffusion
        from effifusion.inference.fusion_fit import final_fusion_for_export

        try:
            model.with_sampler(**overrides)  # the exported card carries the settings evaluate then uses
        except ConfigError as exc:
            raise ConfigError(f"params.yaml export.{exc}") from None
        # gp_sgmse: final fusion fitted on val_items() (validation only) unless export.sampler sets it
        fusion = final_fusion_for_export(model, overrides, val_items)
        return export_diffusion(model, checkpoint, out_dir, name, opset, lengths_s, tolerance, start, fusion)

    model_proto = onnx_model(model, opset, source=checkpoint.name)
    names = [init.name for init in model_proto.graph.initializer]
    leftovers = [name for name in names if name.endswith(("_orig", "_mask"))]
    if leftovers:
        raise ExportError(f"{checkpoint}: pruning reparametrisation left in the graph: {leftovers[:3]}")
    stored_values = sum(int(np.prod(init.dims)) for init in model_proto.graph.initializer)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / name
    with atomic_path(onnx_path) as tmp:
        onnx.save_model(model_proto, tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
        diffs = check_parity(tmp, model, lengths_s, sample_rate)
        worst = max(diffs.values())
        if not worst <= tolerance:
            raise ExportError(
                f"{onnx_path}: ONNX Runtime output differs from the model's enhance() by up to {worst:.3g} "
                f"(tolerance {tolerance:g}); max |diff| per length (s): "
                + ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items())
            )

    polar = polar_rounding_effect(model, max(lengths_s), sample_rate) if model.frontend.exact_polar else None
    params_total = sum(p.numel() for p in model.parameters())
    params_nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    state_values = sum(v.numel() for k, v in model.state_dict().items()
                       if not k.endswith("num_batches_tracked"))
    report = {
        "onnx_file": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_zip_bytes": zip_size(onnx_path),
        "params_total": params_total,
        "params_nonzero": params_nonzero,
        "sparsity": round(1.0 - params_nonzero / params_total, 6) if params_total else 0.0,
        "onnx_initializer_values": stored_values,
        "state_dict_values": state_values,
        "onnx_parity_max_abs": worst,
        "parity_max_abs_per_length_s": diffs,
        "parity_tolerance": tolerance,
        **({} if polar is None else {"parity_reference": "the model on the graph's DFT path",
                                     "polar_rounding_max_abs": polar}),
        "exporter": EXPORTER,
        "opset": opset,
        "onnx_nodes": len(model_proto.graph.node),
    }
    write_json(out_dir / report_file(name), report)  # no timing in the output: a rerun writes the same bytes
    return {**report, "export_seconds": round(time.perf_counter() - start, 2)}


def log_to_mlflow(onnx_path: Path, report: dict[str, Any]) -> None:
    """Log the ONNX model (with signature and input example) and the export metrics (export/onnx_bytes,
    export/onnx_zip_bytes, export/onnx_parity_max_abs) to the active run; a diffusion model's other graph
    goes beside export/export.json (``effifusion report --register`` builds the served model from both)."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from effifusion.tracking.names import EXPORT, in_section

    if mlflow.active_run() is None:
        raise RuntimeError("log_to_mlflow needs an active MLflow run (use tracking.resume_run)")
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1), INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1), OUTPUT_NAME)]),
    )
    model_proto = onnx.load(str(onnx_path))
    sample_rate = int({p.key: p.value for p in model_proto.metadata_props}.get("sample_rate", 16000))
    example = parity_signal(sample_rate // 4, sample_rate)[None]  # 0.25 s, batch 1
    mlflow.onnx.log_model(model_proto, name="onnx", signature=signature, input_example={INPUT_NAME: example},
                          save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"])
    logged = ("onnx_bytes", "onnx_zip_bytes", "onnx_parity_max_abs")
    mlflow.log_metrics(in_section(EXPORT, {k: report[k] for k in logged}))
    mlflow.log_dict(report, "export/export.json")
    for extra in _onnx_files(report)[1:]:  # a diffusion model's predictive graph: the served model needs it
        mlflow.log_artifact(str(Path(onnx_path).with_name(Path(extra).name)), "export")


# ---------------------------------------------------------------------------------------------
# Variants: dense and pruned side by side in one folder


@functools.cache
def _code_hash() -> str:
    """Hash of the code an export depends on (models, front end, sampler, exporter): a reused export must
    come from the same code, not only the same weights and settings."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("models", "dsp", "diffusion", "inference"):
        for f in sorted((root / sub).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def export_key(checkpoint: Path, export: ExportConfig) -> dict[str, Any]:
    """What an export is a function of: the checkpoint's bytes, the export settings (as params.yaml wrote
    them) and the code."""
    from effifusion.tracking.runs import model_md5

    return {"source_md5": model_md5(checkpoint), "export": export.to_dict(), "exporter": EXPORTER,
            "code": _code_hash()}


def _onnx_files(report: dict[str, Any]) -> list[str]:
    """The files an export wrote: the graph, and a diffusion model's predictive graph beside it."""
    return list(report.get("onnx_files", [report["onnx_file"]]))


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def export_variant(variant: str, checkpoint: Path, out_dir: Path, export: ExportConfig | dict[str, Any],
                   audio: AudioConfig | dict[str, Any], val_items: Callable[[], list] | None = None
                   ) -> tuple[dict[str, Any], str]:
    """Export ``checkpoint`` as ``out_dir/<variant>.onnx`` unless an export of the same key is there.

    Returns (report, how): "exported", "reused" (the file already there has the same weights, settings and
    code: a pruning sweep point does not export the dense model again) or "copied" (the other variant's
    single-file export of the same weights: ``prune.method: none``). ``export`` and ``audio`` may be the
    sections' mappings (checked and typed here).
    """
    import shutil

    from effifusion.core.files import write_json
    from effifusion.inference.fusion_fit import ValidationLoader

    export, audio = as_settings(export, ExportConfig), as_settings(audio, AudioConfig)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: {variant} model checkpoint not found")
    name = variant_file(variant)
    key = export_key(checkpoint, export)
    if isinstance(val_items, ValidationLoader):  # gp_sgmse's final fusion is fitted on them (export_onnx)
        key["validation"] = val_items.key()
    report_path = out_dir / report_file(name)
    old = _read_report(report_path)
    if old and old.get("key") == key and all(Path(f).is_file() for f in _onnx_files(old)):
        return old, "reused"
    for other in VARIANTS:
        prev = _read_report(out_dir / report_file(variant_file(other)))
        if (other != variant and prev and prev.get("key") == key and len(_onnx_files(prev)) == 1
                and Path(prev["onnx_file"]).is_file()):
            target = out_dir / name
            with atomic_path(target) as tmp:
                shutil.copyfile(prev["onnx_file"], tmp)
            report = {**prev, "onnx_file": str(target), "variant": variant, "checkpoint": str(checkpoint),
                      "copied_from": prev["onnx_file"]}
            if "onnx_files" in prev:
                report["onnx_files"] = [str(target)]
            write_json(report_path, report)
            return report, "copied"
    start = time.perf_counter()
    report = export_onnx(checkpoint, out_dir, export, audio, name=name, val_items=val_items)
    report = {k: v for k, v in report.items() if k != "export_seconds"}
    report = {**report, "variant": variant, "checkpoint": str(checkpoint), "key": key}
    write_json(report_path, report)  # no timing in the output: a rerun writes the same bytes
    return {**report, "export_seconds": round(time.perf_counter() - start, 2)}, "exported"


def remove_stale(out_dir: Path, reports: list[dict[str, Any]]) -> list[str]:
    """Delete files in ``out_dir`` that no current export wrote (an earlier version's effifusion.onnx, a
    predictive graph of another architecture); return their names."""
    keep = {Path(f).name for r in reports for f in _onnx_files(r)}
    keep |= {report_file(Path(r["onnx_file"]).name) for r in reports}
    stale = sorted(p.name for p in Path(out_dir).iterdir() if p.is_file() and p.name not in keep)
    for name in stale:
        (Path(out_dir) / name).unlink()
    return stale
