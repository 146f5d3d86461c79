"""An fp32 export in ONNX Runtime against the same graph in OpenVINO's bf16, alternately in one process.

    python bench/bench_bf16.py models/onnx/pruned.onnx                 # 2 s, 8 rounds, 1 thread
    python bench/bench_bf16.py M.onnx --seconds 10 --rounds 3 --static  # also a graph compiled for 10 s exactly

Each round times ONNX Runtime fp32, then OpenVINO bf16 (dynamic shapes, as the enhancer compiles a
``.bf16.onnx``), then with ``--static`` the graph reshaped to the input's length (what a fixed-size
streaming chunk could use; not what the enhancer does). Prints each round and a JSON line with the
min/median/max of bf16 / fp32 per round (docs/benchmarks.md, "Reduced precision"). Needs OpenVINO
(``pip install 'effifusion[openvino]'``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an fp32 .onnx export (segmenting models: the input is one segment)")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--static", action="store_true", help="also time the graph compiled for the input's length")
    args = p.parse_args()
    try:
        import openvino as ov
    except ImportError:
        print("bench_bf16: needs OpenVINO: pip install 'effifusion[openvino]'", file=sys.stderr)
        return 2
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    n = dims[1] if isinstance(dims[1], int) else int(args.seconds * 16000)
    x = np.random.default_rng(0).standard_normal((1, n)).astype(np.float32) * 0.1
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": args.threads,
              "PERFORMANCE_HINT": "LATENCY"}
    dynamic = core.compile_model(args.model, "CPU", config).create_infer_request()
    runs = {"fp32": lambda: session.run(None, {"wav": x}), "bf16": lambda: dynamic.infer({0: x})}
    if args.static:
        model = core.read_model(args.model)
        model.reshape({0: [1, n]})
        static = core.compile_model(model, "CPU", config).create_infer_request()
        runs["bf16_static"] = lambda: static.infer({0: x})
    for run in runs.values():  # untimed: kernels built for this length
        run()
    ratios: dict[str, list[float]] = {k: [] for k in runs if k != "fp32"}
    for i in range(args.rounds):
        times = {}
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name] = time.perf_counter() - start
        for name in ratios:
            ratios[name].append(times[name] / times["fp32"])
        print(f"round {i + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in times.items()), flush=True)
    print(json.dumps({"samples": n, "threads": args.threads, "openvino": ov.__version__,
                      "onnxruntime": ort.__version__,
                      **{f"{k}_over_fp32": {"min": round(min(v), 3), "median": round(statistics.median(v), 3),
                                            "max": round(max(v), 3)} for k, v in ratios.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
