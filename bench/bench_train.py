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
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import synthetic_speech  # noqa: E402
from effifusion.config import load_params  # noqa: E402
from effifusion.discriminator import build_discriminator  # noqa: E402
from effifusion.model import build_generator  # noqa: E402
from effifusion.pesq_pool import PesqPool  # noqa: E402
from effifusion.train import GanStep  # noqa: E402


def batch(batch_size: int, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    clean = np.stack([synthetic_speech(samples / 16000, seed + i) for i in range(batch_size)])
    noisy = clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
    g = np.sqrt(samples / (noisy**2).sum(-1, keepdims=True))
    return torch.from_numpy(clean * g), torch.from_numpy(noisy * g)


def bench(params: dict, device: torch.device, steps: int, batch_size: int, segment_s: float, pesq_workers: int,
          amp: bool) -> dict:
    torch.manual_seed(0)
    g = build_generator(params["model"], params["audio"]).to(device)
    d = build_discriminator(params["discriminator"]).to(device)
    opt_g = torch.optim.AdamW(g.parameters(), lr=5e-4, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(d.parameters(), lr=5e-4, betas=(0.8, 0.99))
    clean, noisy = batch(batch_size, int(segment_s * 16000), 0)
    clean, noisy = clean.to(device), noisy.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PesqPool(pesq_workers) as pool:
        step = GanStep(g, d, opt_g, opt_d, params["audio"], dict(params["train"]["loss_weights"]), pool, amp=amp)
        for _ in range(2):  # warm-up (allocator, pool start-up)
            step(clean, noisy)
        for k in step.timings:
            step.timings[k] = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            step(clean, noisy)
        wall = time.perf_counter() - t0
    t = step.timings
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
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
    params = load_params(ROOT / "presets" / f"{args.preset}.yaml" if args.preset else args.params)
    tc = params["train"]
    bs = args.batch or int(tc["batch_size"])
    seg = args.segment_s or float(tc["segment_s"])
    workers = int(tc["pesq_workers"]) if args.pesq_workers is None else args.pesq_workers
    m = params["model"]
    print(f"model C={m['channels']} x{m['num_tsblocks']} blocks, batch {bs} x {seg} s, {args.steps} steps, "
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
