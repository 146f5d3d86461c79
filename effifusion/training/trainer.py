"""The training core: one loop for every architecture and objective.

The trainer owns what every run needs — the data loader, distributed set-up (torchrun), AMP and
compile flags, validation and best-model selection, exact resume and logging — and knows nothing
of GANs, diffusion or pruning: the objective is a task (training/tasks/), extra behaviour a
callback (training/callbacks.py). The train stage is ``fit(...)`` on the dense schedule; the prune
stage is ``fit(...)`` from the dense checkpoint with a PruningCallback on the prune schedule.

Why two stages: the dense model does not depend on the pruning ratio, so a sweep over
``prune.amount`` reruns only the fine-tune (plus export/evaluate), never the dense training.

Everything needed to continue is checkpointed atomically to ``checkpoints/<name>.pt`` (outside
DVC's outputs, which DVC deletes before a stage runs); re-running an interrupted stage with the
same params resumes there and ends where an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from effifusion.core.errors import ConfigError, DataError
from effifusion.core.files import atomic_path, write_csv, write_json
from effifusion.core.settings import Params, RuntimeConfig, as_settings
from effifusion.data.augment import DynamicMixDataset
from effifusion.data.datasets import PairDataset, make_loader, validation_items
from effifusion.models.base import EnhancementModel
from effifusion.models.registry import (
    MODEL_FILE,
    build_model,
    check_model_config,
    check_objective,
    model_file,
    read_checkpoint,
    save_checkpoint,
)
from effifusion.training.callbacks import Callback
from effifusion.training.pesq_pool import PesqPool
from effifusion.training.pruning import count_nonzero
from effifusion.training.tasks import task_class

PARAM_SECTIONS = ("seed", "audio", "model", "discriminator", "train")
RESUME_KEYS = {"config_hash", "model", "task", "callbacks", "state", "rng"}  # what _save_resume writes


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
    """``runtime.device`` (auto | cpu | cuda) as this process's device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("params.yaml runtime.device is 'cuda' but no CUDA device is visible "
                              "(set it to 'auto' or 'cpu')")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def cpu_threads(runtime: RuntimeConfig, dist: Dist) -> int:
    """Torch threads per process on CPU: ``runtime.threads``, or 0 = this process's share of the cores.

    The PESQ workers are not subtracted: they are busy a small fraction of each step, and leaving a
    core idle for them cost more than it saved (demo model, 2 cores: 1.9 s/step with 1 thread,
    1.2 s/step with 2 threads beside one PESQ worker; closing note of issue 8).
    """
    if runtime.threads > 0:
        return runtime.threads
    return max(1, len(os.sched_getaffinity(0)) // dist.world_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _previous(resume_file: Path) -> Path:
    return resume_file.with_name(resume_file.stem + ".prev" + resume_file.suffix)


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


# ---------------------------------------------------------------------------------------------
# Validation and state


@torch.no_grad()
def validate(model: EnhancementModel, items: list[tuple[str, torch.Tensor, torch.Tensor]], device: torch.device,
             pesq: PesqPool) -> tuple[float, dict[str, np.ndarray]]:
    """Mean wide-band PESQ of the model on whole held-out utterances; returns the outputs too."""
    was_training = model.training
    model.eval()
    futures, outputs = [], {}
    for utt, clean, noisy in items:
        est = model.enhance(noisy.to(device)[None]).float().cpu().numpy()
        outputs[utt] = est[0]
        futures.append(pesq.submit(clean.numpy()[None], est))
    scores = np.concatenate([np.asarray(f.result(), dtype=np.float64) for f in futures])
    model.train(was_training)
    finite = scores[np.isfinite(scores)]
    return (float(finite.mean()) if finite.size else float("nan")), outputs


@dataclass
class Schedule:
    """How long and how fast a stage trains (the ``train`` section for train, ``prune`` for prune)."""

    epochs: int
    max_steps_per_epoch: int
    lr: float

    @classmethod
    def from_config(cls, cfg: Any) -> "Schedule":
        """From a TrainConfig or PruneConfig: both name these three settings alike."""
        return cls(cfg.epochs, cfg.max_steps_per_epoch, cfg.lr)


@dataclass
class BestModel:
    """The weights that won validation so far, and their outputs (logged as examples at the end)."""

    step: int
    val: float
    weights: dict[str, torch.Tensor]
    task: dict[str, Any]
    outputs: dict[str, np.ndarray]


@dataclass
class TrainState:
    """Where a run is; saved in the resume checkpoint as a plain dict (see ``to_dict``)."""

    step: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # losses every runtime.log_every_steps
    last: dict[str, Any] | None = None                            # losses of the latest step
    val: list[dict[str, Any]] = field(default_factory=list)      # one row per validation
    best: BestModel | None = None
    run_id: str | None = None
    pesq_failed: int = 0
    pesq_items: int = 0

    @property
    def best_val(self) -> float:
        return self.best.val if self.best is not None else -math.inf

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        best = BestModel(**d["best"]) if d.get("best") else None
        return cls(**{**d, "best": best})


# ---------------------------------------------------------------------------------------------
# The trainer


def config_hash(params: Params, callbacks: Sequence[Callback], init_file: Path | None) -> str:
    """What a resumable checkpoint must match: the params the run reads and its starting weights.

    Not included: the ``runtime`` section (speed only) and ``train.epochs`` — raising the number of
    epochs continues a finished run from its checkpoint instead of training again from scratch.
    """
    blob = {k: params.raw[k] for k in PARAM_SECTIONS}
    blob["train"] = {k: v for k, v in blob["train"].items() if k != "epochs"}
    for cb in callbacks:
        blob.update(cb.config())
    h = hashlib.sha256(json.dumps(blob, sort_keys=True).encode())
    if init_file is not None:
        h.update(hashlib.md5(init_file.read_bytes()).hexdigest().encode())
    return h.hexdigest()[:16]


def fit(
    params: Params | dict[str, Any],
    name: str,
    schedule: Schedule,
    *,
    prepared_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    plots_dir: Path,
    init_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    resume_dir: Path = Path("checkpoints"),
    stop_after_steps: int | None = None,
    stop_after_s: float | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Train the model ``params.model`` describes (from ``init_dir`` if given) and write model, metrics, plots.

    ``params``: the typed Params, or params.yaml's mapping (checked here).

    ``name`` labels the run (resume file, progress bar, MLflow). ``stop_after_steps`` /
    ``stop_after_s`` (wall-clock seconds) end the run early as an interruption would (tests of
    resume and the learning-curve benchmark use them); the resume checkpoint is then kept.
    ``track=False`` skips MLflow (benchmarks).
    """
    params = as_settings(params)
    check_model_config(params.model)  # before any data is read
    check_objective(params.model, params.train.objective)
    if track and os.environ.get("RANK", "0") == "0":  # an unreachable tracking store fails now, not after an epoch
        from effifusion.tracking.runs import setup

        setup(params.mlflow.experiment)
    trainer = Trainer(params, name, schedule, prepared_dir=prepared_dir, init_dir=init_dir, callbacks=callbacks,
                      resume_file=resume_dir / f"{name}.pt")
    return trainer.run(out_dir=out_dir, metrics_path=metrics_path, plots_dir=plots_dir,
                       stop_after_steps=stop_after_steps, stop_after_s=stop_after_s, track=track)


class Trainer:
    """Set-up in ``__init__`` (data, model, task, resume); ``run`` trains, ``_finish`` saves."""

    def __init__(self, params: Params, name: str, schedule: Schedule, *, prepared_dir: Path,
                 init_dir: Path | None, callbacks: Sequence[Callback], resume_file: Path):
        self.params, self.name, self.schedule = params, name, schedule
        self.callbacks = list(callbacks)
        self.prepared_dir, self.init_dir, self.resume_file = prepared_dir, init_dir, resume_file
        self.train_cfg = train = params.train
        self.runtime = runtime = params.runtime
        self.sr = params.audio.sample_rate
        self.seed = params.seed

        self.dist = dist = Dist.from_env()
        self.device = device = pick_device(runtime.device, dist)
        if dist.world_size > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        elif "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(cpu_threads(runtime, dist))
        seed_everything(self.seed)

        # Data
        train_set: Any = PairDataset(prepared_dir / "train.csv", segment_samples=round(train.segment_s * self.sr),
                                     seed=self.seed)
        if train.augment.enabled:
            train_set = DynamicMixDataset(train_set, train.augment, self.sr)
        self.train_set = train_set
        self.val_items = validation_items(prepared_dir / "val.csv", train.val_utterances, self.seed)
        # A step is one optimiser step: the loader yields its batch_size x grad_accum_steps items at once
        # (the same items and crops as one batch of that size) and the task cuts them into micro-batches.
        # Epochs, the LR schedule, validation, checkpoints and resume all count these steps.
        batch_size, accum = train.batch_size, train.grad_accum_steps
        self.step_batch = batch_size * accum
        steps = len(train_set) // (self.step_batch * dist.world_size)
        if schedule.max_steps_per_epoch > 0:
            steps = min(steps, schedule.max_steps_per_epoch)
        if steps < 1:
            raise DataError(f"{prepared_dir / 'train.csv'}: {len(train_set)} utterances give no full step of "
                            f"{batch_size} x {accum} micro-batch(es) x {dist.world_size} process(es); "
                            f"lower train.batch_size or train.grad_accum_steps")
        self.steps_per_epoch = steps
        self.total_steps = schedule.epochs * steps

        # Model, callbacks (pruning reparametrises before any optimiser exists), task
        self.model = model = build_model(params.model, self.sr).to(device)
        init_file = None
        if init_dir is not None:
            init_file = model_file(init_dir)
            model.load_state_dict(read_checkpoint(init_file)["weights"])
        for cb in self.callbacks:
            cb.on_model(model, self.total_steps)
        self.pesq = PesqPool(runtime.pesq_workers, self.sr)
        self.task = task_class(train.objective)(
            model, params, schedule.lr, device, pesq=self.pesq, amp=train.amp == "bf16")
        if init_dir is not None:
            self.task.load_init(init_dir)

        # Resume
        self.chash = config_hash(params, self.callbacks, init_file)
        self.state = TrainState()
        self._resume()

        # Wrappers: DDP for several processes, torch.compile when asked
        self.task.wrap(self._wrap)

    def _resume(self) -> None:
        ckpt = self._load_resume()
        if ckpt is None:
            return
        if ckpt.get("config_hash") != self.chash or ckpt["state"]["step"] > self.total_steps:
            if self.dist.is_main:
                why = ("it was made with other params or weights" if ckpt.get("config_hash") != self.chash
                       else f"it is at step {ckpt['state']['step']}, beyond this schedule's {self.total_steps}")
                print(f"[{self.name}] ignoring {self.resume_file}: {why}")
            return
        self.model.load_state_dict(ckpt["model"])
        self.task.load_state_dict(ckpt["task"])
        for cb, cb_state in zip(self.callbacks, ckpt["callbacks"]):
            cb.load_state_dict(cb_state)
        self.state = TrainState.from_dict(ckpt["state"])
        _set_rng_state(ckpt["rng"])
        if self.dist.is_main:
            print(f"[{self.name}] resuming from {self.resume_file} at step {self.state.step}/{self.total_steps}")

    def _load_resume(self) -> dict[str, Any] | None:
        """The newest readable resume checkpoint: ``NAME.pt``, else the one before it (``NAME.prev.pt``).

        A file that does not load (cut short by a full disk, overwritten, not a checkpoint) is set
        aside as ``*.corrupt`` with a one-line warning, never a traceback, and training goes on
        from the previous checkpoint or from the start.
        """
        for path in (self.resume_file, _previous(self.resume_file)):
            if not path.is_file():
                continue
            try:
                ckpt = torch.load(path, map_location=self.device, weights_only=False)
                if not isinstance(ckpt, dict) or not RESUME_KEYS <= set(ckpt):
                    found = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
                    raise ValueError(f"not a resume checkpoint (keys {found})")
            except Exception as exc:  # unpickling, zip, EOF and key errors all mean: unusable
                if self.dist.is_main:
                    aside = path.with_name(path.name + ".corrupt")
                    os.replace(path, aside)
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    print(f"[{self.name}] warning: {path} is unreadable ({type(exc).__name__}: {reason}); "
                          f"moved to {aside.name}", file=sys.stderr)
                continue
            if path != self.resume_file and self.dist.is_main:
                print(f"[{self.name}] resuming from the previous checkpoint {path}", file=sys.stderr)
            return ckpt
        return None

    def _wrap(self, module: nn.Module, compile: bool = False) -> nn.Module:
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if compile and self.train_cfg.compile:
            module = torch.compile(module)
        return module

    # -- the run ----------------------------------------------------------------------------------

    def run(self, *, out_dir: Path, metrics_path: Path, plots_dir: Path, stop_after_steps: int | None,
            stop_after_s: float | None, track: bool) -> dict[str, Any]:
        run_ctx: Any = contextlib.nullcontext(None)
        if track and self.dist.is_main:
            from effifusion.tracking import runs as tracking

            tags = {}
            if self.init_dir is not None:
                tags["init_from"] = str(self.init_dir)
                dense = tracking.find_model_run(model_file(self.init_dir), self.params.mlflow.experiment)
                if dense is not None:  # ties the runs of one sweep to their dense model
                    tags["dense_run_id"] = dense.info.run_id
            run_ctx = tracking.start_run(self.name, self.params.raw, run_id=self.state.run_id, extra_tags=tags)

        out_dir.mkdir(parents=True, exist_ok=True)
        with run_ctx as run, self.pesq:
            if run is not None:
                from effifusion.tracking.inputs import log_data_inputs

                self.state.run_id = run.info.run_id
                log_data_inputs(self.prepared_dir)  # again on resume: MLflow keeps one input per dataset
            self.run_handle = run
            interrupted = self._loop(stop_after_steps, stop_after_s)
            if interrupted:
                return {"interrupted": True, "step": self.state.step}
            ddp_diff = _ddp_divergence(*self.task.modules()) if self.dist.world_size > 1 else None
            result: dict[str, Any] = {"interrupted": False, "step": self.state.step}
            if self.dist.is_main:
                result = self._finish(out_dir, metrics_path, plots_dir, run, ddp_diff)
        if self.dist.world_size > 1:  # every rank returns rank 0's metrics (a stage script prints them)
            shared = [result]
            torch_dist.broadcast_object_list(shared, src=0)
            result = shared[0]
        return result

    def _loop(self, stop_after_steps: int | None, stop_after_s: float | None) -> bool:
        """Train to the end of the schedule; True if stopped early (the resume checkpoint is kept)."""
        state, task, dist = self.state, self.task, self.dist
        val_every = self.train_cfg.val_every_steps
        ckpt_every, log_every = self.runtime.checkpoint_every_steps, self.runtime.log_every_steps
        steps_run = 0
        self.t_start = time.perf_counter() - state.elapsed_s
        self.pesq.n_failed, self.pesq.n_items = state.pesq_failed, state.pesq_items
        bar = tqdm(total=self.total_steps, initial=state.step, desc=self.name, unit="step", disable=not dist.is_main,
                   dynamic_ncols=True)
        self.pending_log: list[tuple[int, dict[str, float]]] = []

        while state.epoch < self.schedule.epochs:
            epoch = state.epoch
            skip = state.step - epoch * self.steps_per_epoch
            loader = make_loader(self.train_set, self.step_batch, shuffle=True, seed=self.seed, epoch=epoch,
                                 num_workers=self.runtime.dataloader_workers, drop_last=True, skip_batches=skip,
                                 rank=dist.rank, world_size=dist.world_size)
            for clean, noisy in loader:
                if state.step >= (epoch + 1) * self.steps_per_epoch:
                    break
                step = state.step
                losses = task.step(clean.to(self.device, non_blocking=True), noisy.to(self.device, non_blocking=True))
                for cb in self.callbacks:
                    logged = cb.on_step_end(step)
                    if logged:
                        self.pending_log.append((step, logged))
                state.step = step + 1
                steps_run += 1
                row = {"step": step, "epoch": epoch, "lr": task.lr(), **losses}
                state.last = row
                if step % log_every == 0 or state.step == self.total_steps:  # the logging cadence
                    state.history.append(row)
                    self.pending_log.append((step, {k: v for k, v in row.items() if k not in ("step", "epoch")}))
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in task.totals},
                                refresh=False)
                if dist.is_main and (state.step % val_every == 0 or state.step == self.total_steps):
                    self._validate(bar)
                if state.step % ckpt_every == 0:
                    self._flush_logs()
                    self._save_resume()
                if ((stop_after_steps is not None and steps_run >= stop_after_steps)
                        or (stop_after_s is not None and time.perf_counter() - self.t_start >= stop_after_s)):
                    self._flush_logs()
                    self._save_resume()
                    bar.close()
                    return True
            state.epoch = epoch + 1
            task.end_epoch()
            self._flush_logs()
            self._save_resume()
        bar.close()
        self._count_pesq()
        state.elapsed_s = time.perf_counter() - self.t_start
        self._save_resume()  # kept: raising the epochs later continues from here
        return False

    def _validate(self, bar: tqdm) -> None:
        state = self.state
        selectable = all(cb.selectable() for cb in self.callbacks)  # e.g. pruning: at final sparsity only
        with self.task.averaged():  # an EMA's weights for diffusion models: scored and, if best, kept
            val_pesq, val_out = validate(self.model, self.val_items, self.device, self.pesq)
            if selectable and math.isfinite(val_pesq) and val_pesq > state.best_val:
                weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                state.best = BestModel(step=state.step, val=val_pesq, weights=weights,
                                       task=self.task.snapshot(),
                                       # the examples logged at the end: no second validation pass
                                       outputs={u: val_out[u] for u, _, _ in self.val_items[:3]})
        state.val.append({"step": state.step, "val_pesq": val_pesq,
                          "elapsed_s": round(time.perf_counter() - self.t_start, 2)})
        self.pending_log.append((state.step, {"val_pesq": val_pesq}))
        bar.write(f"[{self.name}] step {state.step}: val PESQ {val_pesq:.3f} (best {state.best_val:.3f})")

    def _count_pesq(self) -> None:
        self.state.pesq_failed, self.state.pesq_items = self.pesq.n_failed, self.pesq.n_items

    def _save_resume(self) -> None:
        if not self.dist.is_main:
            return
        self.state.elapsed_s = time.perf_counter() - self.t_start
        self._count_pesq()
        blob = {"config_hash": self.chash, "model": self.model.state_dict(), "task": self.task.state_dict(),
                "callbacks": [cb.state_dict() for cb in self.callbacks], "state": self.state.to_dict(),
                "rng": _rng_state()}
        with atomic_path(self.resume_file) as tmp:
            with open(tmp, "wb") as f:
                torch.save(blob, f)
            if self.resume_file.is_file():  # keep one good checkpoint behind the newest
                os.replace(self.resume_file, _previous(self.resume_file))

    def _flush_logs(self) -> None:
        if self.run_handle is not None and self.pending_log:
            import mlflow

            from effifusion.tracking.names import training_metrics

            for s, row in self.pending_log:
                mlflow.log_metrics(training_metrics(row), step=s)
        self.pending_log.clear()

    # -- the end ----------------------------------------------------------------------------------

    def _finish(self, out_dir: Path, metrics_path: Path, plots_dir: Path, run: Any, ddp_diff: float | None
                ) -> dict[str, Any]:
        """Best weights -> callbacks (pruning masks made permanent) -> checkpoint files, metrics, plots, MLflow."""
        from effifusion.tracking import figures

        state, model = self.state, self.model
        best = state.best
        if best is not None:
            model.load_state_dict(best.weights)
            self.task.restore(best.task)
        else:
            self.task.use_averaged()
        callback_metrics: dict[str, Any] = {}
        for cb in self.callbacks:
            callback_metrics.update(cb.on_finish(model, out_dir, plots_dir))
        nonzero, total = count_nonzero(model)
        save_checkpoint(out_dir / MODEL_FILE, model,
                        extra={"stage": self.name, "step": best.step if best else state.step,
                               "val_pesq": best.val if best else None})
        self.task.save(out_dir)

        if best is not None:  # the validation that chose these weights already scored them
            final_val, outputs = best.val, best.outputs
        else:
            final_val, outputs = validate(model, self.val_items, self.device, self.pesq)
        last = state.last or {}
        metrics = {
            "val_pesq": final_val,
            "best_step": best.step if best else state.step,
            "steps": state.step,
            "params_total": total,
            "params_nonzero": nonzero,
            "sparsity": 1.0 - nonzero / total,
            **callback_metrics,
            "pesq_failed": state.pesq_failed,
            **self.task.metrics(),
            "train_seconds": round(state.elapsed_s, 2),
            "steps_per_s": round(state.step / max(state.elapsed_s, 1e-9), 3),
            **({"ddp_world_size": self.dist.world_size, "ddp_max_param_diff": ddp_diff}
               if ddp_diff is not None else {}),
            **{k: v for k, v in last.items() if k not in ("step", "epoch", "lr")},  # the task's losses
        }
        write_json(metrics_path, metrics)
        write_csv(plots_dir / "losses.csv", state.history)
        write_csv(plots_dir / "val.csv", state.val or [{"step": state.step, "val_pesq": final_val}])

        if run is not None:
            import mlflow

            from effifusion.tracking import runs as tracking
            from effifusion.tracking.names import training_metrics

            mlflow.log_metrics(training_metrics(metrics), step=state.step)
            mlflow.log_artifact(str(out_dir / MODEL_FILE), "checkpoint")
            for cb in self.callbacks:
                for path in cb.artifacts:
                    mlflow.log_artifact(str(path))
            extra_rows = [row for cb in self.callbacks for row in cb.history()]
            with tempfile.TemporaryDirectory() as tmp:
                for f in figures.training_figures(state.history, state.val, extra_rows, Path(tmp) / "figures",
                                                  self.name, totals=self.task.totals):
                    mlflow.log_artifact(str(f), "figures")
                for f in figures.audio_examples(self.val_items[:3], outputs, self.sr, Path(tmp) / "examples"):
                    mlflow.log_artifact(str(f), "val_examples")
            tracking.tag_model(out_dir / MODEL_FILE)  # how export and evaluate find this run
        return metrics


def _ddp_divergence(*models: nn.Module) -> float:
    """Max |param - rank 0's param| over all ranks (0.0 when DDP kept the replicas identical)."""
    vec = torch.cat([p.detach().float().flatten().cpu() for m in models for p in m.parameters()])
    device = next(models[0].parameters()).device
    ref = vec.clone().to(device)
    torch_dist.broadcast(ref, src=0)
    diff = (vec.to(device) - ref).abs().max()
    torch_dist.all_reduce(diff, op=torch_dist.ReduceOp.MAX)
    return float(diff)
