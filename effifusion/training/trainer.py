"""GAN training: the dense stage (`train`) and the pruning fine-tune (`prune`) share this loop.

Why two stages: the dense model does not depend on the pruning ratio, so a sweep over
``prune.amount`` reruns only the fine-tune (plus export/evaluate), never the dense training.

Per step (MP-SENet order): generator forward -> discriminator step -> generator step. PESQ targets
for the discriminator come from a pool of CPU processes: the batch of step k is submitted at step
k and its scores train the discriminator's fake term at step k+1, so PESQ overlaps with the
model work instead of stalling every step (a one-step lag of the discriminator's fake samples).
A batch with a failed PESQ skips its fake term, and failures are counted.

Everything needed to continue is checkpointed atomically to ``checkpoints/<stage>.pt`` (outside
DVC's outputs, which DVC deletes before a stage runs); re-running an interrupted stage with the
same params resumes there and ends where an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from effifusion.dsp import audio as A
from effifusion.data.augment import DynamicMixDataset, check_augment_cfg
from effifusion.data.datasets import PairDataset, make_loader, validation_items
from effifusion.models.discriminator import build_discriminator
from effifusion.core.files import atomic_path
from effifusion.core.errors import ConfigError, DataError
from effifusion.training.losses import discriminator_loss, generator_losses, pesq_to_target
from effifusion.models.effifusion_gan.generator import build_generator, load_checkpoint_file, save_generator
from effifusion.training.pesq_pool import PesqPool
from effifusion.training.pruning import DynamicPruner, count_nonzero, qualified_names, select_prunable

PARAM_SECTIONS = ("seed", "audio", "model", "discriminator", "train")


# ---------------------------------------------------------------------------------------------
# Distributed set-up (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Dist":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("params.yaml train.device is 'cuda' but no CUDA device is visible "
                              "(set it to 'auto' or 'cpu')")
        return torch.device("cuda", dist.local_rank)
    if name != "cpu":
        raise ConfigError(f"params.yaml train.device: {name!r} must be auto, cpu or cuda")
    return torch.device("cpu")


def cpu_threads(tcfg: dict[str, Any], dist: Dist) -> int:
    """Torch threads per process on CPU: ``train.threads``, or 0 = this process's share of the cores.

    The PESQ workers are not subtracted: they are busy a small fraction of each step, and leaving a
    core idle for them cost more than it saved (demo model, 2 cores: 1.9 s/step with 1 thread,
    1.2 s/step with 2 threads beside one PESQ worker; REFERENCE §10 / closing note of issue 8).
    """
    threads = int(tcfg["threads"])
    if threads > 0:
        return threads
    return max(1, len(os.sched_getaffinity(0)) // dist.world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# One GAN step


@dataclass
class _Pending:
    """The previous step's batch, waiting for its PESQ scores to train the discriminator."""

    clean_mag: torch.Tensor
    est_mag: torch.Tensor
    scores: Any  # future of per-item PESQ


class _Scored:
    """Already-known PESQ scores with the PesqResult interface (a pending batch restored on resume)."""

    def __init__(self, scores: np.ndarray):
        self.scores = np.asarray(scores)

    def result(self) -> np.ndarray:
        return self.scores.copy()


@dataclass
class GanStep:
    """Runs one generator-forward / D-step / G-step and records where the time goes."""

    generator: nn.Module            # possibly DDP- or compile-wrapped
    discriminator: nn.Module        # possibly DDP-wrapped
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    audio_cfg: dict[str, Any]
    loss_weights: dict[str, float]
    pesq: PesqPool
    amp: bool = False
    grad_clip: float = 0.0
    pending: _Pending | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"g_s": 0.0, "d_s": 0.0, "pesq_wait_s": 0.0})
    pesq_skipped_batches: int = 0

    def _stft(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.audio_cfg
        return A.stft_mag_phase(wav, a["n_fft"], a["hop_length"], a["win_length"], a["compress_factor"])

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def __call__(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        a = self.audio_cfg
        device = clean.device
        t0 = time.perf_counter()
        clean_mag, clean_pha, clean_com = self._stft(clean)
        noisy_mag, noisy_pha, _ = self._stft(noisy)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
            est_mag, est_pha, est_com = self.generator(noisy_mag, noisy_pha)
        est_mag, est_pha, est_com = est_mag.float(), est_pha.float(), est_com.float()
        est_wav = A.istft_mag_phase(est_mag, est_pha, a["n_fft"], a["hop_length"], a["win_length"],
                                    a["compress_factor"], length=clean.shape[-1])
        _, _, est_com_consistent = self._stft(est_wav)
        scores = self.pesq.submit(clean.detach().cpu().numpy(), est_wav.detach().float().cpu().numpy())
        self._sync(device)
        t1 = time.perf_counter()

        # Discriminator: real pair of this batch, fake pair of the previous batch with its PESQ.
        disc = self.discriminator
        target = None
        if self.pending is not None:
            w0 = time.perf_counter()
            prev_scores = self.pending.scores.result()
            self.timings["pesq_wait_s"] += time.perf_counter() - w0
            target = pesq_to_target(prev_scores)
            if target is None:
                self.pesq_skipped_batches += 1
        self.opt_d.zero_grad(set_to_none=True)
        if target is not None:
            # one forward over real and fake together: DDP allows one forward per backward
            b = clean_mag.shape[0]
            x = torch.cat([clean_mag, self.pending.clean_mag])
            y = torch.cat([clean_mag, self.pending.est_mag])
            out = disc(x, y)
            loss_d = discriminator_loss(out[:b], out[b:], target.to(device))
        else:
            loss_d = discriminator_loss(disc(clean_mag, clean_mag), None, None)
        loss_d.backward()
        self.opt_d.step()
        self.pending = _Pending(clean_mag.detach(), est_mag.detach(), scores)
        self._sync(device)
        t2 = time.perf_counter()

        # Generator: metric loss through the (frozen, unsynchronised) discriminator.
        metric = None
        if self.loss_weights["metric"] != 0:
            d_core = getattr(disc, "module", disc)
            d_core.requires_grad_(False)
            metric = d_core(clean_mag, est_mag)
            d_core.requires_grad_(True)
        losses = generator_losses(clean, est_wav, clean_mag, clean_pha, clean_com, est_mag, est_pha, est_com,
                                  est_com_consistent, metric, self.loss_weights)
        self.opt_g.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), self.grad_clip)
        self.opt_g.step()
        self._sync(device)
        t3 = time.perf_counter()
        self.timings["g_s"] += (t1 - t0) + (t3 - t2)
        self.timings["d_s"] += t2 - t1
        out = {f"g_{k}": float(v.detach()) for k, v in losses.items()}
        out["d_loss"] = float(loss_d.detach())
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss at this step: {out} (lower train.lr or enable grad_clip)")
        return out


# ---------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def validate(generator: nn.Module, items: list[tuple[str, torch.Tensor, torch.Tensor]], device: torch.device,
             pesq: PesqPool) -> tuple[float, dict[str, np.ndarray]]:
    """Mean wide-band PESQ of the generator on whole held-out utterances; returns outputs too."""
    was_training = generator.training
    generator.eval()
    futures, outputs = [], {}
    for utt, clean, noisy in items:
        est = generator.enhance(noisy.to(device)[None]).float().cpu().numpy()
        outputs[utt] = est[0]
        futures.append(pesq.submit(clean.numpy()[None], est))
    scores = np.concatenate([np.asarray(f.result(), dtype=np.float64) for f in futures])
    generator.train(was_training)
    finite = scores[np.isfinite(scores)]
    return (float(finite.mean()) if finite.size else float("nan")), outputs


# ---------------------------------------------------------------------------------------------
# The stage


def config_hash(params: dict[str, Any], stage: str, init_file: Path | None) -> str:
    """What a resumable checkpoint must match: the params the stage reads and its starting weights."""
    keys = PARAM_SECTIONS + (("prune",) if stage == "prune" else ())
    blob = json.dumps({k: params[k] for k in keys}, sort_keys=True).encode()
    h = hashlib.sha256(blob)
    if init_file is not None:
        h.update(hashlib.md5(init_file.read_bytes()).hexdigest().encode())
    return h.hexdigest()[:16]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_training(
    params: dict[str, Any],
    stage: str,
    *,
    prepared_dir: Path = Path("data/prepared"),
    out_dir: Path,
    init_dir: Path | None = None,
    metrics_path: Path,
    plots_dir: Path,
    resume_dir: Path = Path("checkpoints"),
    stop_after_steps: int | None = None,
    stop_after_s: float | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Train (stage "train") or prune-fine-tune (stage "prune") and write models, metrics, plots.

    ``stop_after_steps`` / ``stop_after_s`` (wall-clock seconds) end the run early as an
    interruption would (tests of resume and the learning-curve benchmark use them); the resume
    checkpoint is then kept. ``track=False`` skips MLflow (benchmarks).
    """
    if stage not in ("train", "prune"):
        raise ValueError(f"stage must be 'train' or 'prune', got {stage!r}")
    tcfg, acfg = params["train"], params["audio"]
    pcfg = params["prune"] if stage == "prune" else None
    epochs = int(pcfg["epochs"] if pcfg else tcfg["epochs"])
    max_steps_epoch = int(pcfg["max_steps_per_epoch"] if pcfg else tcfg["max_steps_per_epoch"])
    lr = float(pcfg["lr"] if pcfg else tcfg["lr"])
    sr = int(acfg["sample_rate"])
    seed = int(params["seed"])

    dist = Dist.from_env()
    device = pick_device(str(tcfg["device"]), dist)
    if dist.world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads(tcfg, dist))
    seed_everything(seed)

    # Data
    augment = check_augment_cfg(tcfg["augment"])
    train_set: Any = PairDataset(prepared_dir / "train.csv", segment_samples=int(round(tcfg["segment_s"] * sr)),
                                 seed=seed)
    if augment["enabled"]:
        train_set = DynamicMixDataset(train_set, augment, sr)
    val_items = validation_items(prepared_dir / "val.csv", int(tcfg["val_utterances"]), seed)
    batch_size = int(tcfg["batch_size"])
    steps_per_epoch = len(train_set) // (batch_size * dist.world_size)
    if max_steps_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, max_steps_epoch)
    if steps_per_epoch < 1:
        raise DataError(f"{prepared_dir / 'train.csv'}: {len(train_set)} utterances give no full batch of "
                        f"{batch_size} x {dist.world_size} process(es); lower train.batch_size")
    total_steps = epochs * steps_per_epoch

    # Models (and pruning reparametrisation before the optimizers, see pruning.py)
    generator = build_generator(params["model"], acfg).to(device)
    discriminator = build_discriminator(params["discriminator"]).to(device)
    init_file = None
    if init_dir is not None:
        init_file = init_dir / "generator.pt"
        ckpt = load_checkpoint_file(init_file)
        generator.load_state_dict(ckpt["state_dict"])
        disc_file = init_dir / "discriminator.pt"
        if disc_file.is_file():
            discriminator.load_state_dict(torch.load(disc_file, map_location=device, weights_only=True))
    pruner = None
    if pcfg is not None and float(pcfg["amount"]) > 0:
        targets = select_prunable(generator, list(pcfg["layers"]))
        pruner = DynamicPruner(targets, float(pcfg["amount"]), total_steps, float(pcfg["ramp_fraction"]),
                               int(pcfg["prune_every_steps"]), str(pcfg["scope"]),
                               names=qualified_names(generator, targets))
    betas = tuple(float(b) for b in tcfg["betas"])
    opt_g = torch.optim.AdamW(generator.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.AdamW(discriminator.parameters(), lr=lr, betas=betas)
    sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=float(tcfg["lr_decay"]))
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, gamma=float(tcfg["lr_decay"]))

    # Resume
    chash = config_hash(params, stage, init_file)
    resume_file = resume_dir / f"{stage}.pt"
    state: dict[str, Any] = {"step": 0, "epoch": 0, "history": [], "val": [], "sparsity": [],
                             "best_val": -math.inf, "best_state": None, "run_id": None, "pesq_skipped": 0,
                             "pesq_failed": 0, "pesq_items": 0, "elapsed_s": 0.0}
    if resume_file.is_file():
        ckpt = torch.load(resume_file, map_location=device, weights_only=False)
        if ckpt.get("config_hash") == chash:
            generator.load_state_dict(ckpt["generator"])
            discriminator.load_state_dict(ckpt["discriminator"])
            if pruner is not None:
                pruner.load_state_dict(ckpt["pruner"])
            opt_g.load_state_dict(ckpt["opt_g"])
            opt_d.load_state_dict(ckpt["opt_d"])
            sched_g.load_state_dict(ckpt["sched_g"])
            sched_d.load_state_dict(ckpt["sched_d"])
            state = ckpt["state"]
            _set_rng_state(ckpt["rng"])
            if dist.is_main:
                print(f"[{stage}] resuming from {resume_file} at step {state['step']}/{total_steps}")
        elif dist.is_main:
            print(f"[{stage}] ignoring {resume_file}: it was made with other params or weights")

    # Wrappers: DDP for several processes, torch.compile when asked
    g_train: nn.Module = generator
    d_train: nn.Module = discriminator
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        g_train = DDP(generator, device_ids=ids)
        d_train = DDP(discriminator, device_ids=ids)
    if tcfg["compile"]:
        g_train = torch.compile(g_train)
    amp = str(tcfg["amp"])
    if amp not in ("none", "bf16"):
        raise ConfigError(f"params.yaml train.amp: {amp!r} must be 'none' or 'bf16'")

    pesq = PesqPool(int(tcfg["pesq_workers"]), sr)
    step_fn = GanStep(g_train, d_train, opt_g, opt_d, acfg, dict(tcfg["loss_weights"]), pesq,
                      amp=amp == "bf16", grad_clip=float(tcfg["grad_clip"]))
    run_ctx: Any = contextlib.nullcontext(None)
    if track and dist.is_main:
        from effifusion.tracking import runs as tracking

        tags = {}
        if init_dir is not None:
            tags["init_from"] = str(init_dir)
            if (init_dir / tracking.RUN_REF).is_file():  # ties the runs of one sweep to their dense model
                tags["dense_run_id"] = tracking.read_run_ref(init_dir)["run_id"]
        run_ctx = tracking.start_run(stage, params, run_id=state["run_id"], extra_tags=tags)

    out_dir.mkdir(parents=True, exist_ok=True)
    with run_ctx as run, pesq:
        if run is not None:
            state["run_id"] = run.info.run_id
        result = _loop(
            stage=stage, params=params, state=state, step_fn=step_fn, generator=generator,
            discriminator=discriminator, pruner=pruner, train_set=train_set, val_items=val_items,
            sched=(sched_g, sched_d), optims=(opt_g, opt_d), device=device, dist=dist, epochs=epochs,
            steps_per_epoch=steps_per_epoch, total_steps=total_steps, resume_file=resume_file, chash=chash,
            stop_after_steps=stop_after_steps, stop_after_s=stop_after_s, run=run,
        )
        if result["interrupted"]:
            return result
        if dist.world_size > 1:
            state["ddp_max_param_diff"] = _ddp_divergence(generator, discriminator)
        if dist.is_main:
            result = _finish(stage, params, state, generator, discriminator, pruner, val_items, device, pesq,
                             out_dir, metrics_path, plots_dir, run, step_fn, total_steps)
    if dist.is_main:
        resume_file.unlink(missing_ok=True)
    if dist.world_size > 1:
        torch_dist.barrier()
    return result


def _loop(*, stage, params, state, step_fn, generator, discriminator, pruner, train_set, val_items, sched, optims,
          device, dist, epochs, steps_per_epoch, total_steps, resume_file, chash, stop_after_steps, stop_after_s, run):
    tcfg = params["train"]
    seed = int(params["seed"])
    val_every = max(1, int(tcfg["val_every_steps"]))
    ckpt_every = max(1, int(tcfg["checkpoint_every_steps"]))
    log_every = max(1, steps_per_epoch // 20)
    steps_run = 0
    t_start = time.perf_counter() - state["elapsed_s"]
    step_fn.pesq.n_failed, step_fn.pesq.n_items = state["pesq_failed"], state["pesq_items"]
    step_fn.pesq_skipped_batches = state["pesq_skipped"]
    if state.get("pending") is not None:
        p = state["pending"]
        step_fn.pending = _Pending(p["clean_mag"].to(device), p["est_mag"].to(device), _Scored(p["scores"]))
    bar = tqdm(total=total_steps, initial=state["step"], desc=stage, unit="step", disable=not dist.is_main,
               dynamic_ncols=True)
    pending_log: list[tuple[int, dict[str, float]]] = []

    def save_resume() -> None:
        if not dist.is_main:
            return
        state["elapsed_s"] = time.perf_counter() - t_start
        p = step_fn.pending  # the discriminator's next fake batch: part of an exact resume
        state["pending"] = None if p is None else {"clean_mag": p.clean_mag.cpu(), "est_mag": p.est_mag.cpu(),
                                                   "scores": p.scores.result()}
        _count_pesq(state, step_fn)
        _atomic_torch_save({
            "config_hash": chash, "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "pruner": pruner.state_dict() if pruner else None, "opt_g": optims[0].state_dict(),
            "opt_d": optims[1].state_dict(), "sched_g": sched[0].state_dict(), "sched_d": sched[1].state_dict(),
            "state": state, "rng": _rng_state(),
        }, resume_file)

    def flush_logs() -> None:
        if run is not None and pending_log:
            import mlflow

            for s, row in pending_log:
                mlflow.log_metrics(row, step=s)
        pending_log.clear()

    while state["epoch"] < epochs:
        epoch = state["epoch"]
        skip = state["step"] - epoch * steps_per_epoch
        loader = make_loader(train_set, int(tcfg["batch_size"]), shuffle=True, seed=seed, epoch=epoch,
                             num_workers=int(tcfg["num_workers"]), drop_last=True, skip_batches=skip,
                             rank=dist.rank, world_size=dist.world_size)
        for clean, noisy in loader:
            if state["step"] >= (epoch + 1) * steps_per_epoch:
                break
            step = state["step"]
            losses = step_fn(clean.to(device, non_blocking=True), noisy.to(device, non_blocking=True))
            if pruner is not None:
                new = pruner.step(step)
                if new is not None:
                    state["sparsity"].append({"step": step, "sparsity": new, "target": pruner.target})
                    pending_log.append((step, {"sparsity": new}))
            state["step"] = step + 1
            steps_run += 1
            row = {"step": step, "epoch": epoch, "lr": optims[0].param_groups[0]["lr"], **losses}
            state["history"].append(row)
            if step % log_every == 0 or state["step"] == total_steps:
                pending_log.append((step, {k: v for k, v in row.items() if k not in ("step", "epoch")}))
            bar.update(1)
            bar.set_postfix(g=f"{losses['g_total']:.3f}", d=f"{losses['d_loss']:.3f}", refresh=False)
            if dist.is_main and (state["step"] % val_every == 0 or state["step"] == total_steps):
                val_pesq, val_out = validate(generator, val_items, device, step_fn.pesq)
                state["val"].append({"step": state["step"], "val_pesq": val_pesq,
                                     "elapsed_s": round(time.perf_counter() - t_start, 2)})
                pending_log.append((state["step"], {"val_pesq": val_pesq}))
                # in the prune stage only models at their final sparsity compete for "best"
                at_target = pruner is None or pruner.target >= pruner.final_amount
                if at_target and math.isfinite(val_pesq) and val_pesq > state["best_val"]:
                    state["best_val"] = val_pesq
                    state["best_state"] = {"generator": {k: v.detach().cpu().clone()
                                                         for k, v in generator.state_dict().items()},
                                           "discriminator": {k: v.detach().cpu().clone()
                                                             for k, v in discriminator.state_dict().items()},
                                           "step": state["step"],
                                           # the examples logged at the end: no second validation pass
                                           "val_outputs": {u: val_out[u] for u, _, _ in val_items[:3]}}
                bar.write(f"[{stage}] step {state['step']}: val PESQ {val_pesq:.3f} (best {state['best_val']:.3f})")
            if state["step"] % ckpt_every == 0:
                flush_logs()
                save_resume()
            if ((stop_after_steps is not None and steps_run >= stop_after_steps)
                    or (stop_after_s is not None and time.perf_counter() - t_start >= stop_after_s)):
                flush_logs()
                save_resume()
                bar.close()
                return {"interrupted": True, "step": state["step"]}
        state["epoch"] = epoch + 1
        sched[0].step()
        sched[1].step()
        flush_logs()
        save_resume()
    bar.close()
    _count_pesq(state, step_fn)
    state["elapsed_s"] = time.perf_counter() - t_start
    return {"interrupted": False, "step": state["step"]}


def _ddp_divergence(*models: nn.Module) -> float:
    """Max |param - rank 0's param| over all ranks (0.0 when DDP kept the replicas identical)."""
    vec = torch.cat([p.detach().float().flatten().cpu() for m in models for p in m.parameters()])
    ref = vec.clone()
    device = next(models[0].parameters()).device
    ref = ref.to(device)
    torch_dist.broadcast(ref, src=0)
    diff = (vec.to(device) - ref).abs().max()
    torch_dist.all_reduce(diff, op=torch_dist.ReduceOp.MAX)
    return float(diff)


def _count_pesq(state: dict[str, Any], step_fn: GanStep) -> None:
    state["pesq_skipped"] = step_fn.pesq_skipped_batches
    state["pesq_failed"] = step_fn.pesq.n_failed
    state["pesq_items"] = step_fn.pesq.n_items


def _finish(stage, params, state, generator, discriminator, pruner, val_items, device, pesq, out_dir,
            metrics_path, plots_dir, run, step_fn, total_steps) -> dict[str, Any]:
    """Best weights -> permanent masks -> checkpoint files, metrics, plots, MLflow artifacts."""
    from effifusion.core import files
    from effifusion.tracking import figures

    best = state["best_state"]
    if best is not None:
        generator.load_state_dict(best["generator"])
        discriminator.load_state_dict(best["discriminator"])
    if pruner is not None:
        pruner.make_permanent()
    sparsity = pruner.sparsity() if pruner is not None else None
    nonzero, total = count_nonzero(generator)
    save_generator(out_dir / "generator.pt", generator, params["model"], params["audio"],
                   extra={"stage": stage, "step": best["step"] if best else state["step"],
                          "val_pesq": state["best_val"] if best else None, "run_id": state["run_id"]})
    _atomic_torch_save(discriminator.state_dict(), out_dir / "discriminator.pt")

    if best is not None:  # the validation that chose these weights already scored them
        final_val, outputs = state["best_val"], best["val_outputs"]
    else:
        final_val, outputs = validate(generator, val_items, device, pesq)
    last = state["history"][-1] if state["history"] else {}
    metrics = {
        "val_pesq": final_val,
        "best_step": best["step"] if best else state["step"],
        "steps": state["step"],
        "params_total": total,
        "params_nonzero": nonzero,
        "sparsity": 1.0 - nonzero / total,
        "conv_sparsity": sparsity["overall"] if sparsity else 0.0,
        "pesq_failed": state["pesq_failed"],
        "pesq_skipped_batches": state["pesq_skipped"],
        "train_seconds": round(state["elapsed_s"], 2),
        "steps_per_s": round(state["step"] / max(state["elapsed_s"], 1e-9), 3),
        "pesq_wait_s": round(step_fn.timings["pesq_wait_s"], 3),
        **({"ddp_world_size": torch_dist.get_world_size(), "ddp_max_param_diff": state["ddp_max_param_diff"]}
           if "ddp_max_param_diff" in state else {}),
        **{k: v for k, v in last.items() if k.startswith(("g_", "d_"))},
    }
    files.write_json(metrics_path, metrics)
    files.write_csv(plots_dir / "losses.csv", state["history"])
    files.write_csv(plots_dir / "val.csv", state["val"] or [{"step": state["step"], "val_pesq": final_val}])
    if stage == "prune":
        rows = [{"step": 0, "sparsity": 0.0, "target": 0.0}] + state["sparsity"]
        files.write_csv(plots_dir / "sparsity.csv", rows)
    if sparsity is not None:
        files.write_json(out_dir / "sparsity.json", sparsity)

    if run is not None:
        import mlflow
        from effifusion.tracking import runs as tracking

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                           step=state["step"])
        mlflow.log_artifact(str(out_dir / "generator.pt"), "checkpoint")
        if sparsity is not None:
            mlflow.log_dict(sparsity, "sparsity.json")
        with tempfile.TemporaryDirectory() as tmp:
            for f in figures.training_figures(state, Path(tmp) / "figures", stage):
                mlflow.log_artifact(str(f), "figures")
            sr = int(params["audio"]["sample_rate"])
            for f in figures.audio_examples(val_items[:3], outputs, sr, Path(tmp) / "examples"):
                mlflow.log_artifact(str(f), "val_examples")
        tracking.write_run_ref(out_dir, run)
    return metrics
