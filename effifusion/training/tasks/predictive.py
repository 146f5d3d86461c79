"""A plain predictive objective: the model alone, trained on its reconstruction losses.

The same magnitude, phase, complex, time and consistency terms as the metric-GAN task
(training/losses.py) with the metric term left out — no discriminator, no PESQ in the loop.
It is the ablation "what does the adversarial metric loss add", and the objective of
predictive-only baselines; ``train.objective: predictive`` selects it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from effifusion.core.settings import Params
from effifusion.models.base import EnhancementModel
from effifusion.training.tasks.base import (
    Task,
    Wrap,
    apply_step,
    check_finite,
    forward_spectra,
    make_optimizer,
    mean_losses,
    micro_slices,
    sync_grads,
)


class PredictiveTask(Task):
    """The model, train.optimizer, ExponentialLR per epoch; loss = Σ weights · reconstruction terms.

    A step sums the gradients of ``train.grad_accum_steps`` equal micro-batches of its batch, each loss
    scaled 1/k: the one-batch gradient (exactly, for models without BatchNorm).
    """

    name = "predictive"

    def __init__(self, model: EnhancementModel, params: Params | dict[str, Any], lr: float, device: torch.device,
                 amp: bool = False, **_: Any):
        super().__init__(model, params, lr, device)
        train = self.params.train
        self.weights = replace(train.loss_weights, metric=0.0)
        self.opt = make_optimizer(model.parameters(), train, lr)
        self.accum = train.grad_accum_steps
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=train.lr_decay)
        self.grad_clip = train.grad_clip
        self.amp = amp
        self.net: torch.nn.Module = model

    def wrap(self, wrap: Wrap) -> None:
        self.net = wrap(self.model, compile=True)

    def step(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        k = self.accum
        self.opt.zero_grad(set_to_none=True)
        rows = []
        for i, part in enumerate(micro_slices(clean.shape[0], k)):
            with sync_grads(self.net, i == k - 1):
                s = forward_spectra(self.net, self.model.frontend, clean[part], noisy[part], self.amp)
                losses = s.losses(clean[part], None, self.weights)
                (losses["total"] / k).backward()
            rows.append({f"loss_{name}": float(v.detach()) for name, v in losses.items()})
        apply_step(self.opt, self.net.parameters(), self.grad_clip)
        return check_finite(mean_losses(rows))

    def end_epoch(self) -> None:
        self.sched.step()

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
