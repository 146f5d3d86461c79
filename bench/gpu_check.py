"""GPU check of the paper-size training step: speed per precision, PESQ wait, memory, falling losses, DDP.

    make gpu-check                                            # at most ~8 minutes on one GPU
    python bench/gpu_check.py --json bench/results/gpu_check.json
    python bench/gpu_check.py --quick                         # smoke run: a few steps per phase

The paper preset's model (C=64, 4 TS-Conformer blocks) and recipe (batch 4 x 2 s, runtime.pesq_workers
PESQ processes), synthetic speech-like batches (no dataset needed) and the training stages' own
GanStep. Phases, each under a time cap so the whole run stays within --budget-s (default 450 s):

  fp32     steps/s with the generator in float32
  bf16     steps/s with bf16 autocast (GanStep amp=True), run for up to 300 steps over a fixed set of
           batches: the generator losses must fall (first-20 vs last-20 step means of g_total and
           g_magnitude)
  ddp      a one-process `torchrun --nproc_per_node=1` child: NCCL process group, generator and
           discriminator wrapped in DDP, ~20 GanSteps
  compile  bf16 + torch.compile of the generator, in a child process killed at the time cap; the
           compile time (first step) is reported apart from steps/s

Every row gives steps/s, s/step, the share of the step time spent waiting for PESQ scores
(GanStep.timings["pesq_wait_s"] / wall) and peak GPU memory (torch.cuda.max_memory_allocated). The
Markdown table goes to stdout, and to --json as JSON. Without a CUDA device the script prints one
line and exits 0; it exits 1 when a phase failed or the losses did not fall.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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

SKIP_LINE = "no CUDA device: gpu-check skipped"
COLUMNS = ("config", "steps/s", "s/step", "PESQ wait %", "peak GiB", "notes")
LOSS_WINDOW = 20  # steps averaged at each end of the bf16 run


@dataclass
class Plan:
    """Steps and time caps of each phase (seconds of wall clock)."""

    warmup: int = 3             # steps before timing (allocator, PESQ pool, autotuning)
    timed_steps: int = 100      # fp32 and compile rows
    train_steps: int = 300      # bf16 row: timing and falling losses
    ddp_steps: int = 20
    n_batches: int = 8          # fixed synthetic batches, cycled
    fp32_cap_s: float = 50.0
    bf16_cap_s: float = 120.0
    ddp_cap_s: float = 110.0    # whole child: start-up, NCCL init, steps
    compile_cap_s: float = 60.0   # timed steps after compiling
    compile_min_s: float = 90.0   # compile phase runs only if this much budget is left
    budget_s: float = 450.0
    min_steps_for_loss_check: int = 100  # fewer bf16 steps: losses are reported, not judged


QUICK = Plan(warmup=2, timed_steps=5, train_steps=40, ddp_steps=5, n_batches=2, fp32_cap_s=20.0,
             bf16_cap_s=40.0, ddp_cap_s=90.0, compile_cap_s=20.0, compile_min_s=30.0, budget_s=300.0)


# ---------------------------------------------------------------------------------------------
# Pure helpers (tested without a GPU)


def _cell(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v).replace("|", "/").replace("\n", " ")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, one row per configuration: config, steps/s, s/step, PESQ wait %, peak GiB, notes."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [_cell(r.get("config")), _cell(r.get("steps_per_s"), 2), _cell(r.get("s_per_step"), 4),
                 _cell(r.get("pesq_wait_pct"), 1), _cell(r.get("peak_gib"), 2), _cell(r.get("notes") or "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def loss_fall(history: list[dict[str, float]], keys: tuple[str, ...] = ("g_total", "g_magnitude"),
              window: int = LOSS_WINDOW) -> dict[str, Any]:
    """First-``window`` vs last-``window`` step means of each loss (windows shrink to half the run)."""
    n = len(history)
    k = min(window, n // 2)
    out: dict[str, Any] = {"steps": n, "window": k}
    if k == 0:
        out["falls"] = None
        return out
    falls = True
    for key in keys:
        first = sum(h[key] for h in history[:k]) / k
        last = sum(h[key] for h in history[-k:]) / k
        out[key] = {"first": first, "last": last}
        falls = falls and last < first
    out["falls"] = falls
    return out


def format_loss_fall(lf: dict[str, Any]) -> str:
    if not lf or lf.get("falls") is None:
        return "losses: too few steps to compare"
    parts = [f"{k} {v['first']:.4f} -> {v['last']:.4f}" for k, v in lf.items() if isinstance(v, dict)]
    verdict = "fall" if lf["falls"] else "do NOT fall"
    return (f"losses over {lf['steps']} bf16 steps (mean of first {lf['window']} vs last {lf['window']}): "
            + ", ".join(parts) + f": {verdict}")


def format_report(info: dict[str, Any], rows: list[dict[str, Any]], lf: dict[str, Any] | None,
                  failures: list[str]) -> str:
    i = {"gpu": "?", "torch": "?", "cuda": "?", "channels": "?", "blocks": "?", "params_m": float("nan"),
         "batch": "?", "segment_s": "?", "pesq_workers": "?", "elapsed_s": float("nan"), **info}
    head = (f"GPU check: {i['gpu']}, torch {i['torch']}, CUDA {i['cuda']}; model C={i['channels']} "
            f"x{i['blocks']} blocks ({i['params_m']:.2f} M params), batch {i['batch']} x {i['segment_s']} s, "
            f"PESQ workers {i['pesq_workers']}")
    out = [head, "", format_table(rows)]
    for r in rows:
        if r.get("compile_s") is not None:
            out.append(f"torch.compile time ({r['config']}): {r['compile_s']:.1f} s, not in its steps/s")
    if lf is not None:
        out.append(format_loss_fall(lf))
    out.append(f"total {i['elapsed_s']:.0f} s; "
               + ("all phases passed" if not failures else "FAILED: " + "; ".join(failures)))
    return "\n".join(out) + "\n"


def summarize(name: str, steps: int, wall: float, timings: dict[str, float], peak_mib_: float,
              notes: str = "", **extra: Any) -> dict[str, Any]:
    """One table row from a timed loop."""
    return {"config": name, "steps": steps, "steps_per_s": steps / wall if wall > 0 else None,
            "s_per_step": wall / steps if steps else None,
            "pesq_wait_pct": 100.0 * timings["pesq_wait_s"] / wall if wall > 0 else None,
            "g_s_per_step": timings["g_s"] / steps if steps else None,
            "d_s_per_step": (timings["d_s"] - timings["pesq_wait_s"]) / steps if steps else None,
            "peak_gib": peak_mib_ / 1024, "notes": notes, **extra}


# ---------------------------------------------------------------------------------------------
# Phases


def setup_params(args: argparse.Namespace) -> dict[str, Any]:
    params = load_preset(args.preset)
    if args.tiny:  # CPU smoke runs of this script (tests): the same code on a model that runs in seconds
        params["model"].update(channels=8, num_tsblocks=1)
        params["discriminator"]["channels"] = 8
        params["train"].update(batch_size=2, segment_s=0.5)
    if args.pesq_workers is not None:
        params["runtime"]["pesq_workers"] = args.pesq_workers
    return params


def make_batches(params: dict[str, Any], n: int, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """``n`` fixed synthetic (clean, noisy) batches of train.batch_size x train.segment_s, on ``device``."""
    tc = params["train"]
    bs = int(tc["batch_size"])
    samples = int(round(float(tc["segment_s"]) * int(params["audio"]["sample_rate"])))
    return [tuple(t.to(device) for t in synthetic_batch(bs, samples, 1000 * i)) for i in range(n)]


def timed_run(name: str, params: dict[str, Any], device: torch.device, batches, pool: PesqPool, *, amp: bool,
              compile_: bool, warmup: int, steps: int, cap_s: float, ddp: bool = False,
              deadline: float | None = None) -> tuple[dict, list]:
    """Fresh models, ``warmup`` untimed steps, then up to ``steps`` timed steps, for at most ``cap_s``
    seconds and never past ``deadline`` (a time.perf_counter() value)."""
    reset_peak(device)
    g, d, opt_g, opt_d = build_models(params, device, seed=0)
    g_train, d_train = g, d
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        g_train, d_train = DDP(g, device_ids=ids), DDP(d, device_ids=ids)
    if compile_:
        g_train = torch.compile(g_train)
    step = make_step(params, g_train, d_train, opt_g, opt_d, pool, amp=amp)
    history: list[dict[str, float]] = []
    i = 0
    t0 = time.perf_counter()
    first_step_s = None
    for _ in range(warmup):
        history.append(step(*batches[i % len(batches)]))
        i += 1
        if first_step_s is None:
            first_step_s = time.perf_counter() - t0
    warmup_s = time.perf_counter() - t0
    reset_timings(step)
    t0 = time.perf_counter()
    stop = t0 + cap_s if deadline is None else min(t0 + cap_s, deadline)
    n = 0
    while n < steps and (n == 0 or time.perf_counter() < stop):
        history.append(step(*batches[i % len(batches)]))
        i += 1
        n += 1
    wall = time.perf_counter() - t0
    row = summarize(name, n, wall, dict(step.timings), peak_mib(device), first_step_s=first_step_s,
                    warmup_s=warmup_s, capped=n < steps)
    if compile_:
        row["compile_s"] = max(0.0, first_step_s - (row["s_per_step"] or 0.0))
    del step, g_train, d_train, g, d, opt_g, opt_d
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, history


def _child_cmd(args: argparse.Namespace, mode: str, out: Path, deadline_at: float) -> list[str]:
    cmd = [str(Path(__file__).resolve()), f"--child={mode}", f"--child-out={out}",
           f"--deadline-at={deadline_at:.1f}", f"--preset={args.preset}", f"--device={args.device}"]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--tiny"] if args.tiny else []
    cmd += [f"--pesq-workers={args.pesq_workers}"] if args.pesq_workers is not None else []
    if mode == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *cmd]
    return [sys.executable, *cmd]


def run_child(args: argparse.Namespace, mode: str, timeout_s: float) -> tuple[dict | None, str]:
    """Run a phase in a child process killed after ``timeout_s``; its row (or None) and a failure note."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{mode}.json"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.run(_child_cmd(args, mode, out, time.time() + timeout_s), capture_output=True,
                                  text=True, timeout=timeout_s, env=env, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return None, f"{mode}: did not finish within its cap of {timeout_s:.0f} s"
        log = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 or not out.is_file():
            tail = " / ".join(log.splitlines()[-3:])[-400:]
            return None, f"{mode}: child exited {proc.returncode}: {tail}"
        return json.loads(out.read_text()), ""


def child_main(args: argparse.Namespace) -> int:
    """--child=compile (bf16 + torch.compile) or --child=ddp (under torchrun: NCCL + DDP)."""
    # the parent kills this process at --deadline-at (epoch seconds); stop timing early enough to
    # shut the PESQ pool down and write the result before that
    left = 600.0 if args.deadline_at is None else args.deadline_at - time.time()
    deadline = time.perf_counter() + left - 15
    plan = QUICK if args.quick else Plan()
    params = setup_params(args)
    device = torch.device(args.device)
    world = 1
    if args.child == "ddp":
        import torch.distributed as dist

        if args.device == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        world = dist.get_world_size()
    batches = make_batches(params, plan.n_batches, device)
    with PesqPool(int(params["runtime"]["pesq_workers"]), int(params["audio"]["sample_rate"])) as pool:
        if args.child == "ddp":
            row, _ = timed_run("bf16 + DDP (torchrun, 1 proc)", params, device, batches, pool, amp=True,
                               compile_=False, warmup=plan.warmup, steps=plan.ddp_steps, cap_s=plan.ddp_cap_s,
                               ddp=True, deadline=deadline)
            check = torch.ones(1, device=device)
            dist.all_reduce(check)  # the collective itself, beyond DDP's own gradient all-reduces
            ok = check.item() == world and row["steps"] > 0
            row.update(backend=backend, world_size=world, ok=ok,
                       notes=f"{backend} world {world}: " + ("ok" if ok else "all_reduce check FAILED"))
        else:
            # compiling (the first step) is the part no cap can stop: the parent kills this process at
            # its deadline; the timed loop stops itself before that
            row, _ = timed_run("bf16 + compile", params, device, batches, pool, amp=True, compile_=True,
                               warmup=plan.warmup, steps=plan.timed_steps, cap_s=plan.compile_cap_s,
                               deadline=deadline)
            row["notes"] = (f"compile ≈ {row['compile_s']:.1f} s (first step {row['first_step_s']:.1f} s), "
                            "excluded from steps/s")
    Path(args.child_out).write_text(json.dumps(row))
    if args.child == "ddp":
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def gpu_info(params: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from effifusion.models.registry import build_model

    g = build_model(params["model"], 16000)
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU smoke run)",
            "channels": params["model"].get("channels"), "blocks": params["model"].get("num_tsblocks"),
            "params_m": sum(p.numel() for p in g.parameters()) / 1e6,
            "batch": int(params["train"]["batch_size"]), "segment_s": float(params["train"]["segment_s"]),
            "pesq_workers": int(params["runtime"]["pesq_workers"]), "cpu_cores": os.cpu_count(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper", help="presets/NAME.yaml (default: paper)")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this path")
    ap.add_argument("--quick", action="store_true", help="a few steps per phase (smoke run)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 450, quick 300)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile phase")
    ap.add_argument("--no-ddp", action="store_true", help="skip the torchrun + DDP phase")
    ap.add_argument("--pesq-workers", type=int, default=None, help="default: the preset's runtime.pesq_workers")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help=argparse.SUPPRESS)  # cpu: smoke-test this script's logic without a GPU
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny model (CPU smoke tests)
    ap.add_argument("--child", choices=["compile", "ddp"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline-at", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    if args.child:
        return child_main(args)

    start = time.perf_counter()
    plan = QUICK if args.quick else Plan()
    budget = args.budget_s or plan.budget_s

    def left() -> float:
        return budget - (time.perf_counter() - start)

    params = setup_params(args)
    device = torch.device(args.device)
    info = gpu_info(params, device)
    print(f"gpu-check: {info['gpu']}, torch {info['torch']} (CUDA {info['cuda']}), "
          f"model C={info['channels']} x{info['blocks']}, batch {info['batch']} x {info['segment_s']} s, "
          f"PESQ workers {info['pesq_workers']}, budget {budget:.0f} s", flush=True)
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    lf: dict[str, Any] | None = None

    def failed(name: str, exc: BaseException) -> None:
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        rows.append({"config": name, "notes": f"FAILED: {msg}"})
        failures.append(f"{name}: {msg}")

    reserve = (0 if args.no_ddp else plan.ddp_cap_s) + (0 if args.no_compile else plan.compile_min_s)
    batches = make_batches(params, plan.n_batches, device)
    with PesqPool(info["pesq_workers"], int(params["audio"]["sample_rate"])) as pool:
        for name, amp, steps, cap in (("fp32", False, plan.timed_steps, plan.fp32_cap_s),
                                      ("bf16", True, plan.train_steps, plan.bf16_cap_s)):
            cap = max(5.0, min(cap, left() - reserve - 20))
            print(f"[{name}] up to {steps} steps or {cap:.0f} s", flush=True)
            try:
                row, history = timed_run(name, params, device, batches, pool, amp=amp, compile_=False,
                                         warmup=plan.warmup, steps=steps, cap_s=cap)
            except Exception as exc:  # noqa: BLE001 - record, go on with the next phase
                failed(name, exc)
                continue
            row["notes"] = (f"float32 (TF32 matmul {'on' if info['tf32_matmul'] else 'off'})" if not amp
                            else "autocast bf16 (generator)")
            if amp:
                lf = loss_fall(history)
                row["notes"] += f"; {plan.n_batches} fixed batches, " + format_loss_fall(lf).split(": ", 1)[1]
                if lf["falls"] is False and lf["steps"] >= plan.min_steps_for_loss_check:
                    failures.append("bf16: generator losses did not fall")
            rows.append(row)
            print(f"[{name}] {row['steps']} steps, {row['steps_per_s']:.2f} steps/s", flush=True)
    del batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    for mode, skip in (("ddp", args.no_ddp), ("compile", args.no_compile)):
        name = "bf16 + DDP (torchrun, 1 proc)" if mode == "ddp" else "bf16 + compile"
        if skip:
            continue
        if mode == "ddp":
            timeout = min(plan.ddp_cap_s, left() - (0 if args.no_compile else plan.compile_min_s))
            needed = 30.0
        else:
            timeout, needed = left() - 5, 0.8 * plan.compile_min_s
        if timeout < needed:
            rows.append({"config": name, "notes": f"skipped: {max(0.0, left()):.0f} s of the budget left"})
            failures.append(f"{mode}: no time left in the budget")
            continue
        print(f"[{mode}] child process, cap {timeout:.0f} s", flush=True)
        row, why = run_child(args, mode, timeout)
        if row is None:
            rows.append({"config": name, "notes": f"FAILED: {why}"})
            failures.append(why)
        else:
            rows.append(row)
            print(f"[{mode}] {row['steps']} steps, {row['steps_per_s']:.2f} steps/s", flush=True)
            if mode == "ddp" and not row.get("ok"):
                failures.append("ddp: all_reduce check failed")

    info["elapsed_s"] = time.perf_counter() - start
    print()
    print(format_report(info, rows, lf, failures), end="")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": info, "plan": asdict(plan), "rows": rows, "loss_fall": lf,
                                    "failures": failures}, indent=2, default=str) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
