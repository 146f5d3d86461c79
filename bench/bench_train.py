"""Training-step benchmark: samples/s, seconds per step split into G, D and waiting for PESQ, peak memory.

    python bench/bench_train.py                 # model of params.yaml, on CPU (and CUDA if present)
    python bench/bench_train.py --preset paper  # the paper-size model (C=64, 4 TS-Conformer blocks)
    python bench/bench_train.py --steps 20 --batch 4 --segment-s 2.0 --pesq-workers 4

Synthetic speech-like batches (no dataset needed); the same GanStep the training stages run.
The PESQ column is the time the loop was *blocked* on PESQ: the pool hides the rest behind G/D work.
Compare configurations by the ratios printed in one run; absolute figures vary with machine load.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchlib import (
    ROOT,
    PesqPool,
    build_models,
    load_preset,
    make_step,
    peak_mib,
    reset_peak,
    reset_timings,
    synthetic_batch,
)


def bench(params: dict, device: torch.device, steps: int, batch_size: int, segment_s: float, pesq_workers: int,
          amp: bool) -> dict:
    g, d, opt_g, opt_d = build_models(params, device, seed=0, lr=5e-4)
    clean, noisy = synthetic_batch(batch_size, int(segment_s * 16000), 0)
    clean, noisy = clean.to(device), noisy.to(device)
    reset_peak(device)
    with PesqPool(pesq_workers) as pool:
        step = make_step(params, g, d, opt_g, opt_d, pool, amp=amp)
        for _ in range(2):  # warm-up (allocator, pool start-up)
            step(clean, noisy)
        reset_timings(step)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(clean, noisy)
        wall = time.perf_counter() - t0
    t = step.timings
    peak = peak_mib(device)
    return {
        "device": device.type + ("+bf16" if amp else ""),
        "samples/s": batch_size * steps / wall,
        "s/step": wall / steps,
        "G s/step": t["g_s"] / steps,
        "D s/step": (t["d_s"] - t["pesq_wait_s"]) / steps,
        "PESQ wait s/step": t["pesq_wait_s"] / steps,
        "peak MiB": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--preset", default=None, help="read presets/NAME.yaml instead of --params")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=None, help="default: train.batch_size")
    ap.add_argument("--segment-s", type=float, default=None, help="default: train.segment_s")
    ap.add_argument("--pesq-workers", type=int, default=None, help="default: train.pesq_workers")
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args()
    params = load_preset(args.preset, args.params)
    tc = params["train"]
    bs = args.batch or int(tc["batch_size"])
    seg = args.segment_s or float(tc["segment_s"])
    workers = int(params["runtime"]["pesq_workers"]) if args.pesq_workers is None else args.pesq_workers
    m = params["model"]
    print(f"model C={m.get('channels')} x{m.get('num_tsblocks')} blocks, batch {bs} x {seg} s, {args.steps} steps, "
          f"PESQ workers {workers}, torch threads {torch.get_num_threads()}")
    rows = [bench(params, torch.device("cpu"), args.steps, bs, seg, workers, amp=False)]
    rows.append({**bench(params, torch.device("cpu"), args.steps, bs, seg, 0, amp=False), "device": "cpu, PESQ inline"})
    if torch.cuda.is_available() and not args.cpu_only:
        cuda = torch.device("cuda")
        rows.append(bench(params, cuda, args.steps, bs, seg, workers, amp=False))
        rows.append(bench(params, cuda, args.steps, bs, seg, workers, amp=True))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    base = rows[0]["s/step"]
    print("ratios (s/step vs first row): " + ", ".join(f"{r['device']}: {r['s/step'] / base:.2f}" for r in rows))


if __name__ == "__main__":
    main()
