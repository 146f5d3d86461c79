"""What a training objective provides to the trainer (training/trainer.py).

The trainer knows nothing about GANs or diffusion: it builds the model, runs epochs of batches,
validates, checkpoints and selects. A task owns everything else of its objective — the networks
beyond the model (a discriminator), losses, optimisers and schedulers, one step on a batch, and
what an exact resume needs beyond the model's weights (a pending PESQ batch, an EMA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from effifusion.models.base import EnhancementModel

Wrap = Callable[..., nn.Module]  # wrap(module, compile=False) -> DDP- and/or torch.compile-wrapped module


class Task:
    """Base class of the training objectives (see TASKS in training/tasks/__init__.py)."""

    name: str

    def __init__(self, model: EnhancementModel, params: dict[str, Any], lr: float, device: torch.device):
        self.model = model
        self.params = params
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

    def metrics(self) -> dict[str, float]:
        """Counters the stage's metrics file reports (skipped batches, waits)."""
        return {}

    def modules(self) -> list[nn.Module]:
        """Every network the task trains, model first (DDP divergence checks walk them)."""
        return [self.model]


def snapshot_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
