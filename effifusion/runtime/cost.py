"""What this CPU can do, and where ONNX Runtime spends its time: the bench's cost model. No torch.

- ``gemm_gflops``: the CPU's fp32 matrix-multiply rate for the thread count in force (numpy's
  ``matmul`` of two 2048² float32 matrices, through the BLAS numpy was built with; its thread count
  is OMP/OPENBLAS/MKL_NUM_THREADS, which `effifusion bench` sets before any import). The bench
  states a model's speed as a fraction of it (``efficiency``), which holds across machines where
  an absolute real-time factor does not.
- ``cpu_features``: the vector extensions that decide which kernels run (AVX2, AVX-512, VNNI, BF16,
  AMX), from /proc/cpuinfo's flags (empty where there is none).
- ``profile_top``: ONNX Runtime's profiler output (``SessionOptions.enable_profiling``) summed by
  operator type: total ms, node count, share, and for MatMul/Gemm/Conv the GFLOP/s they reached.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

GEMM_N = 2048
GEMM_REPEATS = 3  # the bench times this many products before loading the model and as many after its run
# flags of /proc/cpuinfo reported, in this order, when present
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                "amx_int8")
CONTROL_FLOW = ("Scan", "Loop", "If")  # their body's nodes are profiled too: counted once, as themselves
FLOP_OPS = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv", "NchwcConv", "MultiHeadAttention")


def gemm_gflops(n: int = GEMM_N, repeats: int = 3) -> float:
    """Best fp32 GFLOP/s (2·n³ per product) of ``repeats`` n×n matrix products in numpy (~0.2 s each at 2048²
    on one core of a recent server CPU)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # the BLAS's threads and buffers start here, untimed
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


def gemm_source(n: int = GEMM_N) -> str:
    """Which GEMM ``gemm_gflops`` timed: numpy's version and its BLAS."""
    import numpy as np

    blas = ""
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f" ({info.get('name', 'BLAS')} {info.get('version', '')})".replace(" )", ")")
    except Exception:  # numpy < 1.25 has no dict mode; the version is enough
        pass
    return f"numpy {np.__version__} matmul{blas}, float32 {n}x{n}"


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The CPU_FEATURES flags this CPU has (Linux /proc/cpuinfo); [] where it cannot be read."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    have = set(flags)
    return [name for name in CPU_FEATURES if name in have]


def _shape(entry: dict[str, Any]) -> list[int]:
    return list(next(iter(entry.values()))) if entry else []


def node_flops(args: dict[str, Any]) -> float:
    """Floating-point operations of one profiled MatMul/Gemm/Conv/MultiHeadAttention from its shapes; 0 else."""
    op = args.get("op_name", "")
    try:
        ins = [_shape(e) for e in args.get("input_type_shape", [])]
        out = _shape(args.get("output_type_shape", [{}])[0])
        if op in ("MatMul", "FusedMatMul"):
            return 2.0 * math.prod(out) * ins[0][-1]
        if op in ("Gemm", "FusedGemm"):  # the profile lists A and C (B is prepacked): A [M, K] as exported
            return 2.0 * math.prod(out) * ins[0][-1]
        if op in ("Conv", "FusedConv", "NchwcConv"):
            return 2.0 * math.prod(out) * math.prod(ins[1][1:])
        if op == "MultiHeadAttention":  # q [B, S, H·d], k [B, L, H·d], v [B, L, H·d_v]: QKᵀ and PV
            (b, s, qk), (_, length, _), v = ins[0], ins[1], ins[2]
            return 2.0 * b * s * length * (qk + v[-1])
    except (IndexError, TypeError, ValueError, StopIteration):
        pass
    return 0.0


def profile_top(profile: str | Path | list[dict[str, Any]], skip_runs: int = 0, top: int = 10
                ) -> list[dict[str, Any]]:
    """Operators by total time over the runs of an ONNX Runtime profile after the first ``skip_runs``
    (the warm-up): [{"op", "nodes", "ms", "share", "gflops"}, ...], ``top`` of them, longest first; ``ms``
    is per run (the mean over the runs summed).

    A control-flow node (Scan) is counted for its own time, its body's nodes under their own types;
    ``share`` is of the summed node time (so the shares add up to 1 over all operators); ``gflops``
    is null except for MatMul, Gemm, Conv and MultiHeadAttention. ``profile``: the JSON file
    ``session.end_profiling()`` wrote, or its events.
    """
    events = json.loads(Path(profile).read_text()) if not isinstance(profile, list) else profile
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    start = runs[skip_runs]["ts"] if len(runs) > skip_runs else math.inf
    nodes = sorted((e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
                    and e["ts"] >= start), key=lambda e: e["ts"])
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    names: dict[str, set[str]] = defaultdict(set)
    open_flow: list[tuple[float, str]] = []  # (end, op) of the control-flow nodes around the current event
    for e in nodes:
        while open_flow and e["ts"] >= open_flow[-1][0]:
            open_flow.pop()
        args = e.get("args", {})
        op = args.get("op_name", "?")
        if open_flow:  # inside a Scan: not its own time
            totals[open_flow[-1][1]][0] -= e["dur"]
        totals[op][0] += e["dur"]
        totals[op][1] += node_flops(args)
        names[op].add(e["name"])
        if op in CONTROL_FLOW:
            open_flow.append((e["ts"] + e["dur"], op))
    total = sum(v[0] for v in totals.values()) or 1.0
    n_runs = max(1, len(runs) - skip_runs)
    rows = [{"op": op, "nodes": len(names[op]), "ms": round(us / 1e3 / n_runs, 2), "share": round(us / total, 4),
             "gflops": round(flops / us / 1e3, 1) if flops and us > 0 else None}
            for op, (us, flops) in totals.items()]
    rows.sort(key=lambda r: -r["ms"])
    return rows[:top]
