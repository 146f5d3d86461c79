"""A plain predictive objective: the model alone, trained on its reconstruction losses.

The same magnitude, phase, complex, time and consistency terms as the metric-GAN task
(training/losses.py) with the metric term left out — no discriminator, no PESQ in the loop.
It is the ablation "what does the adversarial metric loss add", and the objective of
predictive-only baselines; ``train.objective: predictive`` selects it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from effifusion.models.base import EnhancementModel
from effifusion.training.losses import generator_losses
from effifusion.training.tasks.base import Task, Wrap


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
        front = self.model.frontend
        clean_mag, clean_pha, clean_com = front.analyse(clean)
        noisy_mag, noisy_pha, _ = front.analyse(noisy)
        with torch.autocast(clean.device.type, dtype=torch.bfloat16, enabled=self.amp):
            est_mag, est_pha, est_com = self.net(noisy_mag, noisy_pha)
        est_mag, est_pha, est_com = est_mag.float(), est_pha.float(), est_com.float()
        est_wav = front.synthesise(est_mag, est_pha, length=clean.shape[-1])
        _, _, est_com_consistent = front.analyse(est_wav)
        losses = generator_losses(clean, est_wav, clean_mag, clean_pha, clean_com, est_mag, est_pha, est_com,
                                  est_com_consistent, None, self.weights)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.opt.step()
        out = {f"g_{k}": float(v.detach()) for k, v in losses.items()}
        if not all(math.isfinite(v) for v in out.values()):
            raise FloatingPointError(f"non-finite loss at this step: {out} (lower train.lr or enable grad_clip)")
        return out

    def end_epoch(self) -> None:
        self.sched.step()

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
