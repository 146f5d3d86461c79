"""A bf16 export run by OpenVINO: the fp32 graph compiled with OpenVINO's bf16 inference precision.

ONNX Runtime's CPU provider has no bf16 kernels, so ``export.precision: bf16`` writes the fp32 graph again
as ``<name>.bf16.onnx`` with ``precision: bf16`` on its card (inference/quantize.py ``write_bf16``) and the
enhancer runs that file here: OpenVINO reads the ONNX file itself (com.microsoft.MultiHeadAttention
included) and runs convolutions, linear layers and attention in bf16 on AVX512-BF16 / AMX-BF16 CPUs.
OpenVINO is optional (``pip install 'effifusion[openvino]'``); without it, or on a CPU without bf16, the
enhancer says so in one line and runs the same graph in fp32 with ONNX Runtime (runtime/precision.py).
Measured: docs/benchmarks.md, "Reduced precision". No torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import numpy as np

from effifusion.core.errors import ConfigError

EXTRA = "pip install 'effifusion[openvino]'"


def openvino_available() -> bool:
    """Whether OpenVINO can be imported here (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def openvino_graph(path: Path, output_name: str, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``run(x) -> y`` for the ONNX graph at ``path`` compiled by OpenVINO's CPU plugin in bf16 (``threads``:
    its inference threads, None for its default). A graph with a dynamic length is compiled once; one whose
    length is static (a segmenting model, MUSE) is compiled per batch size, fully static, which OpenVINO
    runs faster (MUSE: 0.65x against 0.80x fp32's time, docs/benchmarks.md). A file OpenVINO cannot read
    or compile is a ConfigError naming it."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)

    try:
        source = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError with its whole stack in the text
        raise ConfigError(f"{path}: OpenVINO cannot read it ({_first_line(exc)})") from None
    length = source.input(0).get_partial_shape()[1]

    def compiled(batch: int | None) -> Any:
        model = source
        if batch is not None:  # reshape changes a model in place: a copy per batch size
            model = source.clone()
            model.reshape({0: [batch, length.get_length()]})
        try:
            network = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ConfigError(f"{path}: OpenVINO cannot compile it in bf16 ({_first_line(exc)})") from None
        return network.create_infer_request(), network.output(output_name)

    static_length = length.is_static
    networks: dict[int | None, Any] = {} if static_length else {None: compiled(None)}

    def run(x: np.ndarray) -> np.ndarray:
        key = int(x.shape[0]) if static_length else None
        if key not in networks:
            networks[key] = compiled(key)
        request, output = networks[key]
        return np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[output], copy=True)

    return run


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
