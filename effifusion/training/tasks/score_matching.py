"""Denoising score matching for the diffusion models (sgmse, gp_sgmse), plus the joint model's predictive loss.

Per batch (SGMSE+'s recipe, sp-uhh/sgmse model.py): both waveforms divided by the noisy peak, compressed
complex spectrograms x₀ (clean) and y (noisy), t ~ U(t_eps, 1), x_t = mean(x₀, y, t) + σ(t) z with complex
z (variance 1/2 per part), and

    score loss      = ½ Σ_bins |σ(t) s(x_t, y, t) + z|²   (mean over the batch)
    predictive loss = ½ Σ_bins |x̂(y) − x₀|²                (gp_sgmse; same reduction)

total = ``train.score_matching.score`` · score + ``.predictive`` · predictive [INF: the paper's weights are
not public; StoRM weighs its two terms 0.5 / 0.5]. ``train.optimizer`` (SGMSE+: Adam) at train.lr with
train.betas, ExponentialLR per epoch, and an EMA of the weights (``ema_decay``; SGMSE+: 0.999) that
validation, selection and export use.

Gradient accumulation (``train.grad_accum_steps`` = k): t, z and x_t are drawn for the step's whole batch
first, then the network runs on k equal slices with each loss scaled 1/k, so the summed gradient is the
one-batch gradient (NCSN++ normalises with GroupNorm, per item: exact). The EMA updates once per step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from effifusion.core.errors import ConfigError
from effifusion.core.settings import Params
from effifusion.models.base import EnhancementModel
from effifusion.training.ema import Ema
from effifusion.training.tasks.base import (
    Task,
    Wrap,
    apply_step,
    check_finite,
    make_optimizer,
    mean_losses,
    micro_slices,
    sync_grads,
)


def half_squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """½ Σ_bins |a − b|² over [B, 2, F, T] (Re, Im), averaged over the batch."""
    return 0.5 * (a - b).pow(2).flatten(1).sum(-1).mean()


def score_loss(score: torch.Tensor, z: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Denoising score matching with σ² weighting: ½ Σ |σ s + z|², i.e. s should be −z/σ."""
    return half_squared_error(std * score, -z)


class ScoreMatchingTask(Task):
    name = "score_matching"

    def __init__(self, model: EnhancementModel, params: Params | dict[str, Any], lr: float, device: torch.device,
                 amp: bool = False, **_: Any):
        super().__init__(model, params, lr, device)
        train = self.params.train
        cfg = train.score_matching
        self.w_score, self.w_pred = cfg.score, cfg.predictive
        if self.w_pred > 0 and not model.has_predictive:
            raise ConfigError(f"train.score_matching.predictive: {self.w_pred!r} needs a predictive decoder "
                              f"(model.arch gp_sgmse); {model.arch} has none: set it to 0")
        self.opt = make_optimizer(model.parameters(), train, lr)
        self.accum = train.grad_accum_steps
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=train.lr_decay)
        self.grad_clip = train.grad_clip
        self.ema = Ema(model, cfg.ema_decay)
        self.amp = amp
        self.net: torch.nn.Module = model

    def wrap(self, wrap: Wrap) -> None:
        self.net = wrap(self.model, compile=True)

    def step(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        model, sde = self.model, self.model.sde
        gain = 1.0 / noisy.abs().amax(-1, keepdim=True).clamp_min(1e-8)
        with torch.no_grad():
            x0 = model.pad_frames(model.spectrogram(clean * gain))
            y = model.pad_frames(model.spectrogram(noisy * gain))
            b = x0.shape[0]
            t = torch.rand(b, device=x0.device) * (1 - sde.t_eps) + sde.t_eps
            tb = t[:, None, None, None]
            std = sde.std(tb)
            z = torch.randn_like(x0) * math.sqrt(0.5)
            x_t = sde.mean(x0, y, tb) + std * z
        k = self.accum
        self.opt.zero_grad(set_to_none=True)
        rows = []
        for i, part in enumerate(micro_slices(b, k)):
            with sync_grads(self.net, i == k - 1):
                with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    score, x_pred = self.net(x_t[part], y[part], t[part], predictive=self.w_pred > 0)
                losses = {"score": score_loss(score.to(x0.dtype), z[part], std[part])}
                if x_pred is not None:
                    losses["predictive"] = half_squared_error(x_pred.to(x0.dtype), x0[part])
                total = self.w_score * losses["score"] + self.w_pred * losses.get("predictive", 0.0)
                (total / k).backward()
            rows.append({"loss_total": float(total.detach()),
                         **{f"loss_{n}": float(v.detach()) for n, v in losses.items()}})
        apply_step(self.opt, self.net.parameters(), self.grad_clip)
        self.ema.update(self.model)
        return check_finite(mean_losses(rows))

    @contextmanager
    def averaged(self) -> Iterator[None]:
        with self.ema.applied(self.model):
            yield

    def use_averaged(self) -> None:
        self.ema.copy_to(self.model)

    def end_epoch(self) -> None:
        self.sched.step()

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.ema.load_state_dict(state["ema"])
