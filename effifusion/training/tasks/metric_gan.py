"""The metric-GAN objective (MP-SENet / EffiFusion-GAN, REFERENCE §2) as a training task.

Per step (MP-SENet order): generator forward -> discriminator step -> generator step. PESQ targets
for the discriminator come from a pool of CPU processes: the batch of step k is submitted at step
k and its scores train the discriminator's fake term at step k+1, so PESQ overlaps with the
model work instead of stalling every step (a one-step lag of the discriminator's fake samples).
A batch with a failed PESQ skips its fake term, and failures are counted. The pending batch is
part of the task's state, so a resumed run continues exactly.

Works for any model of the magnitude-phase family: ``model(mag, pha) -> (mag, pha, complex)`` on
its own front end's features (EffiFusion-GAN, MUSE-style models).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from effifusion.core.files import atomic_path
from effifusion.dsp.stft import StftFrontEnd
from effifusion.models.base import EnhancementModel
from effifusion.models.discriminator import build_discriminator
from effifusion.training.losses import discriminator_loss, pesq_to_target
from effifusion.training.pesq_pool import PesqPool
from effifusion.training.tasks.base import Task, Wrap, check_finite, forward_spectra, optimise, snapshot_weights

DISCRIMINATOR_FILE = "discriminator.pt"


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
    frontend: StftFrontEnd
    loss_weights: dict[str, float]
    pesq: PesqPool
    amp: bool = False
    grad_clip: float = 0.0
    pending: _Pending | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"g_s": 0.0, "d_s": 0.0, "pesq_wait_s": 0.0})
    pesq_skipped_batches: int = 0

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def __call__(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        device = clean.device
        t0 = time.perf_counter()
        s = forward_spectra(self.generator, self.frontend, clean, noisy, self.amp)
        clean_mag, est_mag = s.clean_mag, s.est_mag
        scores = self.pesq.submit(clean.detach().cpu().numpy(), s.est_wav.detach().float().cpu().numpy())
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
        losses = s.losses(clean, metric, self.loss_weights)
        optimise(self.opt_g, losses["total"], self.generator.parameters(), self.grad_clip)
        self._sync(device)
        t3 = time.perf_counter()
        self.timings["g_s"] += (t1 - t0) + (t3 - t2)
        self.timings["d_s"] += t2 - t1
        out = {f"g_{k}": float(v.detach()) for k, v in losses.items()}
        out["d_loss"] = float(loss_d.detach())
        return check_finite(out)


class MetricGanTask(Task):
    """Generator (the model) + metric discriminator, AdamW each, ExponentialLR per epoch."""

    name = "metric_gan"

    def __init__(self, model: EnhancementModel, params: dict[str, Any], lr: float, device: torch.device,
                 pesq: PesqPool, amp: bool = False):
        super().__init__(model, params, lr, device)
        tcfg = params["train"]
        self.discriminator = build_discriminator(params["discriminator"]).to(device)
        betas = tuple(float(b) for b in tcfg["betas"])
        self.opt_g = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=lr, betas=betas)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, gamma=float(tcfg["lr_decay"]))
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, gamma=float(tcfg["lr_decay"]))
        self.gan = GanStep(model, self.discriminator, self.opt_g, self.opt_d, model.frontend,
                           dict(tcfg["loss_weights"]), pesq, amp=amp, grad_clip=float(tcfg["grad_clip"]))

    def wrap(self, wrap: Wrap) -> None:
        self.gan.discriminator = wrap(self.discriminator)
        self.gan.generator = wrap(self.model, compile=True)

    def load_init(self, init_dir: Path) -> None:
        disc_file = Path(init_dir) / DISCRIMINATOR_FILE
        if disc_file.is_file():
            self.discriminator.load_state_dict(torch.load(disc_file, map_location=self.device, weights_only=True))

    def step(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        return self.gan(clean, noisy)

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()

    def lr(self) -> float:
        return self.opt_g.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        p = self.gan.pending  # the discriminator's next fake batch: part of an exact resume
        return {
            "discriminator": self.discriminator.state_dict(), "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(), "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "pending": None if p is None else {"clean_mag": p.clean_mag.cpu(), "est_mag": p.est_mag.cpu(),
                                               "scores": p.scores.result()},
            "pesq_skipped": self.gan.pesq_skipped_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        p = state["pending"]
        if p is not None:
            self.gan.pending = _Pending(p["clean_mag"].to(self.device), p["est_mag"].to(self.device),
                                        _Scored(p["scores"]))
        self.gan.pesq_skipped_batches = state["pesq_skipped"]

    def snapshot(self) -> dict[str, Any]:
        return {"discriminator": snapshot_weights(self.discriminator)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(snapshot["discriminator"])

    def save(self, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / DISCRIMINATOR_FILE
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:  # a file object: the archive is not named after tmp
                torch.save(self.discriminator.state_dict(), f)
        return [path]

    def metrics(self) -> dict[str, float]:
        return {"pesq_skipped_batches": self.gan.pesq_skipped_batches,
                "pesq_wait_s": round(self.gan.timings["pesq_wait_s"], 3)}

    def modules(self) -> list[nn.Module]:
        return [self.model, self.discriminator]
