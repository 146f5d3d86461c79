"""Reduced-precision exports at run time: which CPU features each precision needs, and the fp32 fallback.

An int8 export (``export.precision: int8``, inference/quantize.py) is written beside its fp32 model as
``<name>.int8.onnx``; its model card says ``precision: int8`` and names the fp32 file (``fp32_file``).
ONNX Runtime's int8 kernels are fast and exact on x86 only with VNNI (``avx512_vnni`` or ``avx_vnni``):
without it, its u8·s8 products go through ``vpmaddubsw``, whose 16-bit sums can saturate. On such a CPU
the enhancer says so in one line and runs the fp32 model beside it instead (``fallback``). A bf16 export
(``<name>.bf16.onnx``) is the fp32 graph with ``precision: bf16`` on its card, run by OpenVINO in bf16
(runtime/openvino_model.py); it needs AVX512-BF16 or AMX-BF16 (else the fp32 model beside it) and OpenVINO
(else the same graph in ONNX Runtime, fp32: ``bf16_runner``), each said in one line. No torch.
"""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path
from typing import Any, Callable

PRECISIONS = ("fp32", "int8", "bf16")
# precision -> (CPU flags of /proc/cpuinfo, any of which suffices; what to call them in the fallback line)
NEEDS = {"int8": (("avx512_vnni", "avx_vnni"), "VNNI (avx512_vnni or avx_vnni)"),
         "bf16": (("avx512_bf16", "amx_bf16"), "AVX512-BF16 or AMX-BF16")}


def precision_file(path: str | Path, precision: str) -> Path:
    """Where the ``precision`` model of the fp32 export ``path`` goes: ``pruned.onnx`` -> ``pruned.int8.onnx``."""
    path = Path(path)
    return path if precision == "fp32" else path.with_name(f"{path.stem}.{precision}{path.suffix}")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (Linux /proc/cpuinfo), or None where they cannot be read (then nothing falls back)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return None
    return frozenset(line.partition(":")[2].split()) if line else None


def missing_feature(precision: str, flags: frozenset[str] | None = None) -> str | None:
    """What this CPU lacks to run ``precision`` well (the text for the fallback line), or None."""
    flags = cpu_flags() if flags is None else flags
    if precision not in NEEDS or flags is None:
        return None
    wanted, text = NEEDS[precision]
    return None if any(f in flags for f in wanted) else text


def fallback(path: Path, metadata: dict[str, str]) -> Path | None:
    """The fp32 model to run instead of the reduced-precision export at ``path`` (its card ``metadata``) on
    a CPU without what it needs, after printing one line saying so; None to run ``path`` itself."""
    precision = metadata.get("precision", "fp32")
    lacking = missing_feature(precision)
    if lacking is None:
        return None
    fp32 = path.with_name(metadata.get("fp32_file", ""))
    if not metadata.get("fp32_file") or not fp32.is_file():
        runs = ("its graph runs in fp32 with ONNX Runtime" if precision == "bf16"  # the bf16 file is the fp32 graph
                else f"the {precision} model runs (slowly)")
        print(f"effifusion: {path.name} is {precision} and this CPU lacks {lacking}; its fp32 model "
              f"{fp32.name or '(not named)'} is not beside it, so {runs}", file=sys.stderr)
        return None
    print(f"effifusion: {path.name} is {precision}, but this CPU lacks {lacking}: running the fp32 model "
          f"{fp32.name} instead", file=sys.stderr)
    return fp32


def bf16_runner(path: Path, output_name: str, threads: int | None) -> Callable[[Any], Any] | None:
    """The bf16 export at ``path`` compiled by OpenVINO, or None (after one line saying why) where OpenVINO
    is not installed: the file is the fp32 graph, which ONNX Runtime then runs as it is."""
    from effifusion.runtime.openvino_model import EXTRA, openvino_available, openvino_graph

    if not openvino_available():
        print(f"effifusion: {path.name} is bf16, which runs in OpenVINO ({EXTRA}); it is not installed: "
              "running the same graph in fp32 with ONNX Runtime", file=sys.stderr)
        return None
    return openvino_graph(path, output_name, threads)
