"""What both ONNX exporters share (the waveform graph of inference/export.py and the diffusion networks of
inference/diffusion_export.py): the exporter's name, the error type, report names, and the clean-up every
exported graph goes through (stable names, no per-node metadata, Cast for CastLike)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from effifusion.core.errors import EffiFusionError

MIN_OPSET = 18  # the dynamo exporter's oldest supported opset
EXPORTER = f"torch.onnx dynamo (torch {torch.__version__.split('+')[0]}), onnxscript optimizer off"


class ExportError(EffiFusionError):
    """The exported graph does not reproduce the PyTorch model (parity check failed)."""


def report_file(name: str) -> str:
    """The export report beside ``name``: pruned.onnx -> pruned.export.json."""
    return (name[: -len(".onnx")] if name.endswith(".onnx") else name) + ".export.json"


def set_card(model_proto: Any, card: dict[str, str]) -> Any:
    """``model_proto`` with ``card`` as its whole ``metadata_props`` (the model card, runtime/onnx_model.py)."""
    del model_proto.metadata_props[:]
    for key, value in card.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    return model_proto


def finished(model_proto: Any) -> Any:
    """The exporter's ModelProto cleaned up: metadata stripped, CastLike made Cast, names canonical."""
    return canonical_names(castlike_to_cast(stripped(model_proto)))


def canonical_names(model_proto: Any) -> Any:
    """Name nodes, intermediate values and subgraphs by their order in the graph.

    The exporter numbers them from counters that live for the whole process (a second export of the
    same model in one process comes out as val_6 where the first had val_5), so the same checkpoint
    would give different bytes and DVC would call the export changed. Graph inputs, outputs and
    initializers (the weights' names) keep their names.
    """
    graph = model_proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {t.name for t in graph.initializer}
    mapping: dict[str, str] = {}
    counters = {"node": 0, "graph": 0}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.setdefault(name, f"v{len(mapping)}")

    def walk(g: Any, top: bool) -> None:
        if not top:
            g.name = f"subgraph_{counters['graph']}"
            counters["graph"] += 1
            for v in list(g.input) + list(g.output):
                v.name = rename(v.name)
        for node in g.node:
            node.name = f"n{counters['node']}"
            counters["node"] += 1
            node.input[:] = [rename(x) for x in node.input]
            node.output[:] = [rename(x) for x in node.output]
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g, top=False)
                for sub in attr.graphs:
                    walk(sub, top=False)

    walk(graph, top=True)
    return model_proto


def stripped(model_proto: Any) -> Any:
    """Drop the exporter's per-node metadata (stack traces with local paths, FX names: ~6 times the
    demo model's weights) and the intermediate shape annotations (ONNX Runtime infers them), so the
    file holds the graph and the weights. Subgraphs (the attention's Scan bodies) alike."""

    def strip(graph: Any) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    strip(attr.g)
                for sub in attr.graphs:
                    strip(sub)
        del graph.value_info[:]

    strip(model_proto.graph)
    return model_proto


def castlike_to_cast(model_proto: Any) -> Any:
    """Replace CastLike(x, like) by Cast(x, to=dtype of like) where shape inference knows the dtype.

    With the onnxscript optimizer off the exporter leaves ~20 CastLike nodes; ONNX Runtime has no CPU
    kernel to constant-fold them and warns about each one whenever a session is created with its
    default log level (MLflow's pyfunc loader does), although the graph runs correctly.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model_proto)
    dtypes = {v.name: v.type.tensor_type.elem_type for v in
              [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    dtypes.update({init.name: init.data_type for init in model_proto.graph.initializer})
    for node in model_proto.graph.node:
        if node.op_type == "CastLike" and dtypes.get(node.input[1]):
            to = dtypes[node.input[1]]
            del node.input[1]
            del node.attribute[:]
            node.op_type = "Cast"
            node.attribute.append(onnx.helper.make_attribute("to", to))
    return model_proto


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines, 'torchvision is not installed' and pytree FutureWarnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def zip_size(path: Path) -> int:
    """Bytes of ``path`` DEFLATE-compressed in a zip (level 9): where unstructured sparsity shows."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.write(path, arcname=path.name)
    return buf.getbuffer().nbytes
