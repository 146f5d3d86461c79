"""CPU inference benchmark: PyTorch vs ONNX Runtime, 1 thread vs all cores, 1 s / 10 s / 60 s inputs.

    python bench/bench_infer.py                          # the model of params.yaml, random weights
    python bench/bench_infer.py --params presets/paper.yaml
    python bench/bench_infer.py --checkpoint models/pruned/model.pt --quick
    python bench/bench_infer.py --lengths 1 30 --threads 1 --backends onnx

A table over `effifusion bench`'s measurement (effifusion/inference/bench.py: ``prepare`` once,
then ``measure`` per row): every (backend, threads, length) runs in its own child process, so its
memory is its own; ``peak_mb`` is its peak resident size minus its size once the model is loaded
(``peak_rss_mib`` − ``baseline_rss_mib``). Unlike the command, inputs longer than ``--chunk-s``
(default 10 s) go through ``Enhancer.enhance_long`` with ``--overlap-s`` (1 s) overlap, as
`effifusion enhance` would, shorter ones in one piece; each row starts with an untimed warm-up on
one chunk, and the real-time factor is the best of ``--repeats`` runs. The MAC rate divides the
analytic MAC count (summed over the chunks actually run) by that time. Unstructured sparsity is
not exploited by either runtime (REFERENCE §3): zeros cost the same as other weights. Results are
printed as Markdown tables.

Efficiency (issue 22): each row also gives ``gemm_gflops``, this CPU's fp32 matrix-multiply rate measured
in that row's own process for its thread count, and ``efficiency`` = 2 × MACs / time ÷ that rate.
``--profile-s S`` adds one ONNX Runtime-profiled run of S s on 1 thread and prints its top operators;
``--peers muse imse saf`` measures those presets' models (ONNX, 1 thread, ``--peer-s`` s, one piece) in
the same sitting. The table of docs/benchmarks.md (2026-12-03) is::

    python bench/bench_infer.py --params paper --lengths 2 10 60 --threads 1 2 --chunk-s 60 \\
        --warmup-s 0.5 --repeats 1 --backends onnx pytorch
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELS = {"pytorch": "pytorch", "onnx": "onnxruntime"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml", help="params file (or preset name) describing the model")
    p.add_argument("--checkpoint", default=None, help="a trained generator .pt instead of random weights")
    p.add_argument("--quick", action="store_true", help="1 s and 10 s inputs, one timed run each")
    p.add_argument("--lengths", type=float, nargs="+", default=None, help="input lengths in s (default 1 10 60)")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 and all cores)")
    p.add_argument("--backends", nargs="+", choices=tuple(LABELS), default=list(LABELS))
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (best is kept)")
    p.add_argument("--chunk-s", type=float, default=10.0, help="chunk length for longer inputs")
    p.add_argument("--overlap-s", type=float, default=1.0, help="overlap of those chunks")
    p.add_argument("--profile-s", type=float, nargs="*", default=[],
                   help="lengths of extra ONNX runs (1 thread) under ONNX Runtime's profiler: top operators")
    p.add_argument("--peers", nargs="*", default=[], help="presets whose models to measure too (ONNX, 1 thread)")
    p.add_argument("--peer-s", type=float, default=2.0, help="input length of the --peers runs")
    p.add_argument("--warmup-s", type=float, default=None,
                   help="untimed warm-up length before each row (default: one chunk, min(input, --chunk-s))")
    p.add_argument("--rows", default=None, help="also write each row as one JSON line to this file, as measured")
    args = p.parse_args()

    from tqdm import tqdm

    from effifusion.core.errors import user_message
    from effifusion.core.files import markdown_table
    from effifusion.inference.bench import measure, prepare

    lengths = args.lengths or ([1.0, 10.0] if args.quick else [1.0, 10.0, 60.0])
    cores = os.cpu_count() or 1
    thread_counts = sorted(set(args.threads or {1, cores}))
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            start = time.perf_counter()
            prepared = prepare(Path(tmp_name), args.params, tuple(args.backends), args.checkpoint)
            export_s = time.perf_counter() - start
            onnx_mb = prepared.onnx.stat().st_size / 2**20 if prepared.onnx else None
            jobs = [(backend, threads, seconds) for seconds in lengths for threads in thread_counts
                    for backend in args.backends]
            for backend, threads, seconds in tqdm(jobs, desc="bench", unit="run"):
                repeats = args.repeats or (1 if args.quick or seconds > args.chunk_s else 3)
                warmup = min(seconds, args.chunk_s if args.warmup_s is None else args.warmup_s)
                row = measure(prepared, backend, seconds, threads, chunk_s=args.chunk_s,
                              overlap_s=args.overlap_s, repeats=repeats, warmup_s=warmup)
                rows.append({**row, "runs": repeats})
                if args.rows:
                    with open(args.rows, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
            profiles = [measure(prepared, "onnx", seconds, 1, chunk_s=args.chunk_s, warmup_s=min(seconds, 0.5),
                                profile=True) for seconds in args.profile_s if prepared.onnx is not None]
            peers = []
            for name in tqdm(args.peers, desc="peers", unit="model"):
                peer_dir = Path(tmp_name) / name
                peer_dir.mkdir()
                peer = prepare(peer_dir, name, ("onnx",))
                peers.append(measure(peer, "onnx", args.peer_s, 1, chunk_s=None, warmup_s=min(args.peer_s, 0.5),
                                     profile=True))
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        raise SystemExit(f"bench_infer: {message}") from None

    model = prepared.model
    counts = sum(int((q != 0).sum()) for q in model.parameters())
    cfg = model.config()
    print(f"\n## CPU inference: C={cfg.get('channels')}, {cfg.get('num_tsblocks')} TS blocks, "
          + (f"{args.checkpoint}" if args.checkpoint else "random weights"))
    print(f"{rows[0]['params_total']:,} params ({counts:,} non-zero)"
          + (f", ONNX {onnx_mb:.2f} MiB" if onnx_mb is not None else "")
          + f" (prepared in {export_s:.0f} s), {cores} cores ({rows[0]['platform']['cpu']}), torch threads / "
          f"ORT intra-op threads as listed; best of the timed runs; inputs over {args.chunk_s:g} s in "
          f"{args.chunk_s:g} s chunks overlapping by {args.overlap_s:g} s\n")
    table = [{"backend": LABELS[r["backend"]], "threads": r["threads"], "input_s": r["seconds"],
              "rtf": r["rtf"], "seconds": r["compute_s"],
              "peak_mb": round(max(0.0, r["peak_rss_mib"] - r["baseline_rss_mib"])),
              "rss_mb": round(r["peak_rss_mib"]), "chunked": r["chunked"],
              "gmac": r["gmac_total"], "gmac_per_s": r["gmac_per_s_achieved"],
              "gemm_gflops": r["gemm_gflops"], "efficiency": r["efficiency"]}
             for r in rows]
    print(markdown_table(table, ["backend", "threads", "input_s", "rtf", "seconds", "peak_mb", "rss_mb",
                                 "chunked", "gmac", "gmac_per_s", "gemm_gflops", "efficiency"]))
    print(f"\nGEMM reference: {rows[0]['gemm_source']}; CPU features: "
          f"{', '.join(rows[0]['platform']['cpu_features']) or 'none listed'}\n")
    for r in profiles:
        print(f"ONNX Runtime profile, {r['seconds']:g} s, 1 thread (RTF {r['rtf']}, efficiency {r['efficiency']}; "
              "time per operator type, Scan bodies under their own types)\n")
        print(markdown_table(r["profile_top"][:5], ["op", "nodes", "ms", "share", "gflops"]))
        print()
    if peers:
        print(f"Other architectures, ONNX Runtime, 1 thread, {args.peer_s:g} s in one piece, random weights\n")
        print(markdown_table([{"preset": r["preset"], "arch": r["arch"], "params": r["params_total"],
                               "rtf": r["rtf"], "gmac": r["gmac_total"], "gmac_per_s": r["gmac_per_s_achieved"],
                               "gemm_gflops": r["gemm_gflops"], "efficiency": r["efficiency"],
                               "peak_rss_mb": round(r["peak_rss_mib"]),
                               "top_ops": ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in r["profile_top"][:3])}
                              for r in peers]))
        print()
    if set(args.backends) != set(LABELS):
        return
    ratios = []
    for seconds in lengths:
        for threads in thread_counts:
            pair = {r["backend"]: r for r in table if r["input_s"] == seconds and r["threads"] == threads}
            ort, pt = pair["onnxruntime"], pair["pytorch"]
            ratios.append({"input_s": seconds, "threads": threads,
                           "onnx_vs_pytorch_time": round(ort["seconds"] / max(pt["seconds"], 1e-9), 2),
                           "onnx_vs_pytorch_peak_mem": round(ort["peak_mb"] / max(pt["peak_mb"], 1.0), 2)})
    print("ONNX Runtime / PyTorch (below 1: ONNX Runtime faster or leaner)\n")
    print(markdown_table(ratios))


if __name__ == "__main__":
    main()
