"""A plain predictive objective: the model alone, trained on its reconstruction losses.

The same magnitude, phase, complex, time and consistency terms as the metric-GAN task
(training/losses.py) with the metric term left out — no discriminator, no PESQ in the loop.
It is the ablation "what does the adversarial metric loss add", and the objective of
predictive-only baselines; ``train.objective: predictive`` selects it.
"""

from __future__ import annotations

from typing import Any

import torch

from effifusion.models.base import EnhancementModel
from effifusion.training.tasks.base import Task, Wrap, check_finite, forward_spectra, optimise


class PredictiveTask(Task):
    """The model, AdamW, ExponentialLR per epoch; loss = Σ weights · reconstruction terms (metric ignored)."""

    name = "predictive"

    def __init__(self, model: EnhancementModel, params: dict[str, Any], lr: float, device: torch.device,
                 amp: bool = False, **_: Any):
        super().__init__(model, params, lr, device)
        tcfg = params["train"]
        self.weights = {**tcfg["loss_weights"], "metric": 0.0}
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(float(b) for b in tcfg["betas"]))
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=float(tcfg["lr_decay"]))
        self.grad_clip = float(tcfg["grad_clip"])
        self.amp = amp
        self.net: torch.nn.Module = model

    def wrap(self, wrap: Wrap) -> None:
        self.net = wrap(self.model, compile=True)

    def step(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        s = forward_spectra(self.net, self.model.frontend, clean, noisy, self.amp)
        losses = s.losses(clean, None, self.weights)
        optimise(self.opt, losses["total"], self.net.parameters(), self.grad_clip)
        return check_finite({f"g_{k}": float(v.detach()) for k, v in losses.items()})

    def end_epoch(self) -> None:
        self.sched.step()

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
