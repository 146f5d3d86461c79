"""What a training objective provides to the trainer (training/trainer.py).

The trainer knows nothing about GANs or diffusion: it builds the model, runs epochs of batches,
validates, checkpoints and selects. A task owns everything else of its objective — the networks
beyond the model (a discriminator), losses, optimisers and schedulers, one step on a batch, and
what an exact resume needs beyond the model's weights (a pending PESQ batch, an EMA).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from effifusion.core.settings import LossWeights, Params, TrainConfig, as_settings
from effifusion.dsp.stft import StftFrontEnd
from effifusion.models.base import EnhancementModel
from effifusion.models.registry import check_objective
from effifusion.training.losses import generator_losses

Wrap = Callable[..., nn.Module]  # wrap(module, compile=False) -> DDP- and/or torch.compile-wrapped module


class Task:
    """Base class of the training objectives (see TASKS in training/tasks/__init__.py)."""

    name: str
    # the loss keys of step() shown in the progress bar and the figures' "totals" panel; every key step()
    # returns is logged (train/<key> in MLflow, plots/<stage>/losses.csv)
    totals: tuple[str, ...] = ("loss_total",)

    def __init__(self, model: EnhancementModel, params: Params | dict[str, Any], lr: float, device: torch.device):
        check_objective(type(model), self.name)
        self.model = model
        self.params = as_settings(params)  # params.yaml's mapping is checked (tests, notebooks)
        self.device = device

    def wrap(self, wrap: Wrap) -> None:
        """Wrap the networks the step runs (DDP across processes, torch.compile when asked)."""

    def load_init(self, init_dir: Path) -> None:
        """Start this task's own networks from ``init_dir`` too (the model's weights are loaded already)."""

    def step(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch [B, N] of (clean, noisy); the losses as floats."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Learning-rate schedules advance here."""

    def lr(self) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs beyond the model's weights."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """CPU copies of this task's networks' weights, kept with the best model."""
        return {}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Back to a snapshot (the best model's), before saving."""

    def save(self, out_dir: Path) -> list[Path]:
        """Files beside the model checkpoint (e.g. the discriminator, which pruning fine-tunes further)."""
        return []

    def averaged(self) -> ContextManager[None]:
        """The weights validation scores and the best model keeps (an EMA's, for diffusion) in the block."""
        return contextlib.nullcontext()

    def use_averaged(self) -> None:
        """Keep those weights in the model for good (the end of a run that never selected a best model)."""

    def metrics(self) -> dict[str, float]:
        """Counters the stage's metrics file reports (skipped batches, waits)."""
        return {}

    def modules(self) -> list[nn.Module]:
        """Every network the task trains, model first (DDP divergence checks walk them)."""
        return [self.model]


@dataclass
class Spectra:
    """A batch through a magnitude-phase model: targets, estimates, and what the losses need."""

    clean_mag: torch.Tensor
    clean_pha: torch.Tensor
    clean_com: torch.Tensor
    est_mag: torch.Tensor
    est_pha: torch.Tensor
    est_com: torch.Tensor
    est_wav: torch.Tensor
    est_com_consistent: torch.Tensor  # STFT(iSTFT(estimate)): the consistency loss's target

    def losses(self, clean: torch.Tensor, metric_score: torch.Tensor | None, weights: LossWeights
               ) -> dict[str, torch.Tensor]:
        return generator_losses(clean, self.est_wav, self.clean_mag, self.clean_pha, self.clean_com, self.est_mag,
                                self.est_pha, self.est_com, self.est_com_consistent, metric_score, weights)


def forward_spectra(net: nn.Module, frontend: StftFrontEnd, clean: torch.Tensor, noisy: torch.Tensor,
                    amp: bool) -> Spectra:
    """The model ``net(mag, pha) -> (mag, pha, complex)`` on a batch; the losses in the input's precision
    (float32; float64 in the exactness tests of gradient accumulation), outside bf16 autocast."""
    clean_mag, clean_pha, clean_com = frontend.analyse(clean)
    noisy_mag, noisy_pha, _ = frontend.analyse(noisy)
    with torch.autocast(clean.device.type, dtype=torch.bfloat16, enabled=amp):
        est_mag, est_pha, est_com = net(noisy_mag, noisy_pha)
    est_mag, est_pha, est_com = (t.to(noisy_mag.dtype) for t in (est_mag, est_pha, est_com))
    est_wav = frontend.synthesise(est_mag, est_pha, length=clean.shape[-1])
    _, _, est_com_consistent = frontend.analyse(est_wav)
    return Spectra(clean_mag, clean_pha, clean_com, est_mag, est_pha, est_com, est_wav, est_com_consistent)


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def make_optimizer(parameters: Any, train: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """``train.optimizer`` (adamw | adam) over ``parameters`` at ``lr`` with ``train.betas``.

    Every network of every task is built here, so a paper's optimiser (MP-SENet: AdamW; SAF, SGMSE+:
    Adam) is a preset setting rather than code; torch's defaults otherwise (AdamW weight decay 0.01).
    """
    return OPTIMIZERS[train.optimizer](parameters, lr=lr, betas=train.betas)


def micro_slices(n: int, k: int) -> list[slice]:
    """k equal slices of a step's batch of ``n`` items.

    Equal sizes make Σ_i loss_i / k (each loss a mean over its micro-batch) the mean over all n
    items, so the accumulated gradient is the one-batch gradient.
    """
    if k < 1 or n % k:
        raise ValueError(f"a batch of {n} does not split into train.grad_accum_steps = {k} "
                         f"equal micro-batches")
    m = n // k
    return [slice(i * m, (i + 1) * m) for i in range(k)]


def sync_grads(module: nn.Module, sync: bool) -> ContextManager[Any]:
    """DDP's ``no_sync`` unless ``sync``: gradients are all-reduced once per step, at the last micro-batch.

    DDP decides at forward time, so the micro-batch's forward and backward both run inside. A module
    that is not DDP-wrapped (one process) has nothing to skip.
    """
    no_sync = getattr(module, "no_sync", None)
    return contextlib.nullcontext() if sync or no_sync is None else no_sync()


def apply_step(optimizer: torch.optim.Optimizer, params: Any, grad_clip: float) -> None:
    """Optional clipping of the (accumulated) gradient's norm, then the optimiser step."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def mean_losses(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each loss averaged over the micro-batches: the value one batch of all their items gives."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def check_finite(losses: dict[str, float]) -> dict[str, float]:
    if not all(math.isfinite(v) for v in losses.values()):
        raise FloatingPointError(f"non-finite loss at this step: {losses} (lower train.lr or enable grad_clip)")
    return losses


def snapshot_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
