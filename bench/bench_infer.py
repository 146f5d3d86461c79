"""CPU inference benchmark: PyTorch vs ONNX Runtime, 1 thread vs all cores, 1 s / 10 s / 60 s inputs.

    python bench/bench_infer.py                          # the model of params.yaml, random weights
    python bench/bench_infer.py --params presets/paper.yaml
    python bench/bench_infer.py --checkpoint models/pruned/generator.pt --quick

Every (backend, threads, length) runs in its own subprocess, so its peak memory (ru_maxrss minus the
resident size once the model is loaded) is its own. Inputs longer than ``--chunk-s`` (default 10 s,
as `effifusion enhance`) go through ``Enhancer.enhance_long`` with 1 s overlap; shorter ones in one
piece. Each measurement starts with an untimed warm-up run of one chunk (ONNX Runtime's arena and
kernel choice). The real-time factor is the best of ``--repeats`` runs (seconds of compute per
second of audio); the MAC rate divides the analytic MAC count (effifusion.models.summary, summed over the
chunks actually run) by that time. Unstructured sparsity is not exploited by either runtime
(REFERENCE §3): zeros cost the same as other weights. Results are printed as Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OVERLAP_S = 1.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""

    from effifusion.dsp.streaming import ChunkedStream, chunk_geometry
    from effifusion.inference.backends import load_enhancer
    from effifusion.inference.export import parity_signal
    from effifusion.models.cost import frames_for
    from effifusion.models.registry import load_checkpoint

    if args.backend == "pytorch":
        import torch

        torch.set_num_interop_threads(1)
    enhancer = load_enhancer(args.model, threads=args.threads)
    sr = enhancer.sample_rate
    n = int(round(args.seconds * sr))
    x = parity_signal(n, sr, seed=3)
    long_input = args.seconds > args.chunk_s

    def run() -> None:
        if long_input:
            enhancer.enhance_long(x, args.chunk_s, OVERLAP_S)
        else:
            enhancer.enhance(x)

    base_rss = rss_bytes()  # model loaded, nothing run yet
    enhancer.enhance(x[: int(round(min(args.seconds, args.chunk_s) * sr))])  # warm-up: allocations, kernels
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    generator, _ = load_checkpoint(args.checkpoint)
    hop = generator.frontend.hop_length
    if long_input:
        chunk, overlap = chunk_geometry(args.chunk_s, OVERLAP_S, sr)
        n_chunks = ChunkedStream.count_chunks(n, chunk, overlap)
        macs = n_chunks * generator.macs(1 + chunk // hop)["total"]
    else:
        macs = generator.macs(frames_for(args.seconds, sr, hop))["total"]
    best = min(times)
    print(json.dumps({
        "backend": args.backend, "threads": args.threads, "input_s": args.seconds, "seconds": best,
        "rtf": best / args.seconds, "peak_mb": max(0, peak - base_rss) / 2**20,
        "gmac": macs / 1e9, "gmac_per_s": macs / 1e9 / best, "runs": len(times),
    }))


def prepare_models(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, dict]:
    """(checkpoint .pt, exported .onnx, model description) for the benchmark."""
    import onnx
    import torch

    from effifusion.core.config import load_params
    from effifusion.inference.export import onnx_model
    from effifusion.models.cost import parameter_counts
    from effifusion.models.registry import build_model, load_checkpoint, save_checkpoint

    params = load_params(args.params)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        generator, _ = load_checkpoint(ckpt)
    else:
        torch.manual_seed(0)
        generator = build_model(params["model"], params["audio"]["sample_rate"]).eval()
        ckpt = tmp / "generator.pt"
        save_checkpoint(ckpt, generator)
    start = time.perf_counter()
    proto = onnx_model(generator, int(params["export"]["opset"]), source=ckpt.name)
    model_cfg = generator.config()
    onnx_path = tmp / "effifusion.onnx"
    onnx.save_model(proto, str(onnx_path))
    counts = parameter_counts(generator)
    info = {
        "model": f"C={model_cfg['channels']}, {model_cfg['num_tsblocks']} TS blocks"
                 + (f", {ckpt}" if args.checkpoint else ", random weights"),
        "params": counts["params_total"], "params_nonzero": counts["params_nonzero"],
        "onnx_mb": onnx_path.stat().st_size / 2**20, "export_s": time.perf_counter() - start,
    }
    return ckpt, onnx_path, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml", help="params file describing the model")
    p.add_argument("--checkpoint", default=None, help="a trained generator .pt instead of random weights")
    p.add_argument("--quick", action="store_true", help="1 s and 10 s inputs, one timed run each")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (best is kept)")
    p.add_argument("--chunk-s", type=float, default=10.0, help="chunk length for the 60 s input")
    p.add_argument("--worker", nargs=4, metavar=("BACKEND", "THREADS", "SECONDS", "MODEL"),
                   help=argparse.SUPPRESS)
    p.add_argument("--worker-checkpoint", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        backend, threads, seconds, model = args.worker
        worker(argparse.Namespace(backend=backend, threads=int(threads), seconds=float(seconds), model=model,
                                  checkpoint=args.worker_checkpoint, repeats=args.repeats or 1,
                                  chunk_s=args.chunk_s))
        return

    from tqdm import tqdm

    from effifusion.core.files import markdown_table

    lengths = [1.0, 10.0] if args.quick else [1.0, 10.0, 60.0]
    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores})
    with tempfile.TemporaryDirectory() as tmp_name:
        ckpt, onnx_path, info = prepare_models(args, Path(tmp_name))
        jobs = [(backend, threads, seconds) for seconds in lengths for threads in thread_counts
                for backend in ("pytorch", "onnxruntime")]
        rows = []
        for backend, threads, seconds in tqdm(jobs, desc="bench", unit="run"):
            repeats = args.repeats or (1 if args.quick or seconds > args.chunk_s else 3)
            model = ckpt if backend == "pytorch" else onnx_path
            cmd = [sys.executable, __file__, "--worker", backend, str(threads), str(seconds), str(model),
                   "--worker-checkpoint", str(ckpt), "--repeats", str(repeats),
                   "--chunk-s", str(args.chunk_s)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                tail = out.stderr.strip().splitlines()[-1:] or ["(no output)"]
                raise SystemExit(f"bench_infer: {backend}, {threads} thread(s), {seconds:g} s failed: "
                                 f"{tail[0]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"\n## CPU inference: {info['model']}")
    print(f"{info['params']:,} params ({info['params_nonzero']:,} non-zero), ONNX {info['onnx_mb']:.2f} MiB, "
          f"{cores} cores, torch threads / ORT intra-op threads as listed; best of the timed runs; "
          f"inputs over {args.chunk_s:g} s in {args.chunk_s:g} s chunks\n")
    print(markdown_table(
        [{**r, "rtf": round(r["rtf"], 3), "seconds": round(r["seconds"], 2), "peak_mb": round(r["peak_mb"]),
          "gmac": round(r["gmac"], 1), "gmac_per_s": round(r["gmac_per_s"], 1)} for r in rows],
        ["backend", "threads", "input_s", "rtf", "seconds", "peak_mb", "gmac", "gmac_per_s"]))
    ratios = []
    for seconds in lengths:
        for threads in thread_counts:
            pair = {r["backend"]: r for r in rows if r["input_s"] == seconds and r["threads"] == threads}
            ort, pt = pair["onnxruntime"], pair["pytorch"]
            ratios.append({"input_s": seconds, "threads": threads,
                           "onnx_vs_pytorch_time": round(ort["seconds"] / pt["seconds"], 2),
                           "onnx_vs_pytorch_peak_mem": round(ort["peak_mb"] / max(pt["peak_mb"], 1.0), 2)})
    print("ONNX Runtime / PyTorch (below 1: ONNX Runtime faster or leaner)\n")
    print(markdown_table(ratios))


if __name__ == "__main__":
    main()
