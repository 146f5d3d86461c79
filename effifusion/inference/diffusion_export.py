"""ONNX export of the diffusion models: their networks, not a waveform graph.

A diffusion model enhances by running its network 1 to ~60 times inside a sampler, so the graph is the
network and the sampler stays outside it, in numpy (diffusion/), shared by PyTorch and ONNX Runtime:

- ``NAME.onnx``: the score network, (x [B, 2, F, T], y [B, 2, F, T], t [B]) -> score [B, 2, F, T],
  with the model card (``runtime: diffusion``, front end, SDE and sampler settings as JSON);
- ``NAME.predictive.onnx`` (gp_sgmse): the predictive network, y -> x̂ (a second file because ONNX
  Runtime runs every node of a graph whatever output is asked for).

Parity is checked twice: each network on random inputs, and the whole enhancer (ONNX Runtime's sampler
against the model's ``enhance``, the same seed) at each of ``export.parity_lengths_s``.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effifusion.core.files import atomic_path, write_json
from effifusion.dsp.signals import parity_signal
from effifusion.inference.onnx_graph import EXPORTER, ExportError, finished, quiet_exporter, report_file, zip_size
from effifusion.runtime.onnx_model import onnx_session

SCORE_INPUTS, SCORE_OUTPUT = ("x", "y", "t"), "score"
PREDICTIVE_INPUTS, PREDICTIVE_OUTPUT = ("y",), "estimate"


def predictive_file(name: str) -> str:
    return name[: -len(".onnx")] + ".predictive.onnx" if name.endswith(".onnx") else name + ".predictive.onnx"


def _export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], inputs: tuple[str, ...], output: str,
            multiple: int, opset: int) -> Any:
    batch = torch.export.Dim("batch", min=1, max=4096)
    blocks = torch.export.Dim("blocks", min=1, max=100_000)
    spec = {0: batch, 3: multiple * blocks}
    shapes = {name: ({0: batch} if name == "t" else spec) for name in inputs}
    with quiet_exporter(), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # derived frame axes
        program = torch.onnx.export(module.eval(), example, dynamo=True, optimize=False, opset_version=opset,
                                    input_names=list(inputs), output_names=[output], dynamic_shapes=shapes,
                                    verbose=False)
        return finished(program.model_proto)  # its warnings quiet too


def _card(model: Any, source: str, predictive: str) -> dict[str, str]:
    from effifusion import __version__

    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    f = model.frontend
    return {"arch": model.arch, "runtime": model.runtime, "input_name": ",".join(SCORE_INPUTS),
            "input_shape": "x, y: [batch, 2, bins, frames] float32 (Re, Im); t: [batch] float32",
            "output_name": SCORE_OUTPUT, "output_shape": "[batch, 2, bins, frames] float32",
            "sample_rate": str(model.sample_rate),
            "normalisation": "max: the runtime divides each waveform by its peak and multiplies the output back",
            "segment_samples": "0", "min_samples": str(model.min_samples), "memory_mb_per_s": "unmeasured",
            "params_total": str(total), "params_nonzero": str(nonzero),
            "sparsity": f"{1.0 - nonzero / total:.6f}" if total else "0",
            "config": json.dumps(model.config()), **{k: str(v) for k, v in f.config().items()},
            "spec_scale": str(model.spec_scale), "time_multiple": str(model.time_multiple),
            "sde": json.dumps(model.sde.config()), "sampler": json.dumps(model.sampler.config()),
            "predictive_file": predictive, "effifusion_version": __version__, "exporter": EXPORTER,
            "source": source}


def network_parity(model: Any, score_path: Path, predictive_path: Path | None, frames: int = 16) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| of each network on random inputs (two batch items, ``frames`` frames),
    relative to the PyTorch output's peak (the score grows as 1/t, so an absolute bound would depend on t)."""
    g = torch.Generator().manual_seed(0)
    shape = (2, 2, model.n_bins, max(model.time_multiple, frames - frames % model.time_multiple))
    x, y = 0.3 * torch.randn(shape, generator=g), 0.3 * torch.randn(shape, generator=g)
    t = torch.tensor([0.9, 0.1])
    out: dict[str, float] = {}
    with torch.inference_mode():
        ref = model.score(x, y, t).numpy()
    got = onnx_session(score_path).run([SCORE_OUTPUT], {"x": x.numpy(), "y": y.numpy(), "t": t.numpy()})[0]
    out["score"] = float(np.max(np.abs(got - ref)) / max(1e-12, float(np.max(np.abs(ref)))))
    if predictive_path is not None:
        with torch.inference_mode():
            ref = model.predict(y).numpy()
        got = onnx_session(predictive_path).run([PREDICTIVE_OUTPUT], {"y": y.numpy()})[0]
        out["predictive"] = float(np.max(np.abs(got - ref)) / max(1e-12, float(np.max(np.abs(ref)))))
    return out


def export_diffusion(model: Any, checkpoint: Path, out_dir: Path, name: str, opset: int, lengths_s: list[float],
                     tolerance: float, start: float, fusion: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write NAME.onnx (+ NAME.predictive.onnx), check parity, write NAME.export.json; the report."""
    import onnx

    from effifusion.runtime.diffusion_runtime import diffusion_run_batch

    mult, bins = model.time_multiple, model.n_bins
    ex, ey = torch.randn(2, 2, bins, 2 * mult) * 0.1, torch.randn(2, 2, bins, 2 * mult) * 0.1  # distinct tensors:
    t = torch.tensor([0.5, 0.7])  # torch.export merges inputs that are one object
    out_dir.mkdir(parents=True, exist_ok=True)
    score_path = out_dir / name
    pred_name = predictive_file(name) if model.has_predictive else ""
    pred_path = out_dir / pred_name if pred_name else None
    score_net = model.export_networks()["score"]
    protos = {score_path: _export(score_net, (ex, ey, t), SCORE_INPUTS, SCORE_OUTPUT, mult, opset)}
    if pred_path is not None:
        protos[pred_path] = _export(model.export_networks()["predictive"], (ex,), PREDICTIVE_INPUTS,
                                    PREDICTIVE_OUTPUT, mult, opset)
    card = _card(model, checkpoint.name, pred_name)
    for key, value in card.items():
        entry = protos[score_path].metadata_props.add()
        entry.key, entry.value = key, value
    for proto in protos.values():
        proto.producer_name = "effifusion"
    with atomic_path(score_path) as tmp_score, (atomic_path(pred_path) if pred_path else nullcontext()) as tmp_pred:
        onnx.save_model(protos[score_path], tmp_score)
        onnx.checker.check_model(str(tmp_score), full_check=True)
        if pred_path is not None:
            onnx.save_model(protos[pred_path], tmp_pred)
            onnx.checker.check_model(str(tmp_pred), full_check=True)
        nets = network_parity(model, tmp_score, tmp_pred)
        session = onnx_session(Path(tmp_score))
        run_batch, _ = diffusion_run_batch(Path(tmp_score), session, session.get_modelmeta().custom_metadata_map,
                                           None, predictive_path=tmp_pred)
        diffs = {}
        for i, seconds in enumerate(lengths_s):
            x = parity_signal(max(1, int(round(seconds * model.sample_rate))), model.sample_rate, seed=10 + i)
            with torch.inference_mode():
                expected = model.enhance(torch.from_numpy(x)[None]).numpy()[0]
            diffs[f"{seconds:g}"] = float(np.max(np.abs(run_batch(x[None])[0] - expected)))
        worst = max(diffs.values())
        if not worst <= tolerance:
            raise ExportError(f"{score_path}: ONNX Runtime's sampler output differs from the model's enhance() by up "
                              f"to {worst:.3g} (tolerance {tolerance:g}); networks (relative): {nets}")
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    files = [score_path] + ([pred_path] if pred_path else [])
    report = {
        "onnx_file": str(score_path), "onnx_files": [str(p) for p in files],
        "onnx_bytes": sum(p.stat().st_size for p in files), "onnx_zip_bytes": sum(zip_size(p) for p in files),
        "params_total": total, "params_nonzero": nonzero,
        "sparsity": round(1.0 - nonzero / total, 6) if total else 0.0,
        "onnx_initializer_values": sum(int(np.prod(i.dims)) for p in protos.values() for i in p.graph.initializer),
        "state_dict_values": sum(v.numel() for v in model.state_dict().values()),
        "onnx_parity_max_abs": worst, "parity_max_abs_per_length_s": diffs, "parity_tolerance": tolerance,
        "network_parity_max_rel": nets, "sampler": model.sampler.config(),
        "network_evaluations": model.sampler.evaluations(),
        "exporter": EXPORTER, "opset": opset, "onnx_nodes": sum(len(p.graph.node) for p in protos.values()),
    }
    if fusion is not None:  # the final-fusion weights on the card: fitted, or set by export.sampler
        report["final_fusion"] = fusion
    write_json(out_dir / report_file(name), report)
    return {**report, "export_seconds": round(time.perf_counter() - start, 2)}

