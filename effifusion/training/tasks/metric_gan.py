"""The metric-GAN objective (MP-SENet / EffiFusion-GAN, docs/reference.md §2) as a training task.

Per step (MP-SENet order): generator forward -> discriminator step -> generator step. PESQ targets
for the discriminator come from a pool of CPU processes: the batch of step k is submitted at step
k and its scores train the discriminator's fake term at step k+1, so PESQ overlaps with the
model work instead of stalling every step (a one-step lag of the discriminator's fake samples).
A batch with a failed PESQ skips its fake term, and failures are counted. The pending batch is
part of the task's state, so a resumed run continues exactly.

Gradient accumulation (``train.grad_accum_steps`` = k): the step's batch is cut into k equal
micro-batches. The generator forward of the first runs before the discriminator step as above; the
discriminator step sums k micro-batch gradients (real pairs of this step, fake pairs of the same
micro-batch of the previous step), then the generator step sums k, each loss scaled 1/k, with one
micro-batch's graph alive at a time. Spectral norm's power iteration runs on the first micro-batch
of each step only, as it runs once on one batch, so without BatchNorm the step equals one batch of
k × batch_size (tested) — except that a failed PESQ skips the fake term of its micro-batch only.

Works for any model of the magnitude-phase family: ``model(mag, pha) -> (mag, pha, complex)`` on
its own front end's features (EffiFusion-GAN, MUSE-style models).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from effifusion.core.files import atomic_path
from effifusion.core.settings import LossWeights, Params, as_settings
from effifusion.dsp.stft import StftFrontEnd
from effifusion.models.base import EnhancementModel
from effifusion.models.discriminator import build_discriminator
from effifusion.training.losses import discriminator_loss, pesq_to_target
from effifusion.training.pesq_pool import PesqPool
from effifusion.training.tasks.base import (
    Spectra,
    Task,
    Wrap,
    apply_step,
    check_finite,
    forward_spectra,
    make_optimizer,
    mean_losses,
    micro_slices,
    snapshot_weights,
    sync_grads,
)

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


@contextmanager
def power_iteration(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Spectral norm's power iteration on, or off (σ estimate reused) for the forwards in the block.

    Each training-mode forward of a spectral-normed layer refines its u, v in place. Off for every
    micro-batch but the first, a step refines them once, as one forward of the whole batch does.
    """
    norms = [m for m in module.modules() if hasattr(m, "n_power_iterations") and m.training]
    frozen = [] if enabled else norms
    for m in frozen:
        m.train(False)
    try:
        yield
    finally:
        for m in frozen:
            m.train(True)


@dataclass
class GanStep:
    """Runs one generator-forward / D-step / G-step and records where the time goes.

    ``accum_steps`` equal micro-batches per call (see the module docstring); ``pending`` holds one
    entry per micro-batch.
    """

    generator: nn.Module            # possibly DDP- or compile-wrapped
    discriminator: nn.Module        # possibly DDP-wrapped
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    frontend: StftFrontEnd
    loss_weights: LossWeights      # train.loss_weights (a mapping is checked like params.yaml's)
    pesq: PesqPool
    amp: bool = False
    grad_clip: float = 0.0
    pending: list[_Pending] | None = None
    accum_steps: int = 1
    timings: dict[str, float] = field(default_factory=lambda: {"g_s": 0.0, "d_s": 0.0, "pesq_wait_s": 0.0})
    pesq_skipped_batches: int = 0

    def __post_init__(self) -> None:
        self.loss_weights = as_settings(self.loss_weights, LossWeights)

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _forward(self, clean: torch.Tensor, noisy: torch.Tensor) -> tuple[Spectra, Any]:
        """Generator forward on a micro-batch, its PESQ submitted to the pool."""
        s = forward_spectra(self.generator, self.frontend, clean, noisy, self.amp)
        scores = self.pesq.submit(clean.detach().cpu().numpy(), s.est_wav.detach().float().cpu().numpy())
        return s, scores

    def __call__(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        device = clean.device
        k = self.accum_steps
        parts = micro_slices(clean.shape[0], k)
        if self.pending is not None and len(self.pending) != k:
            raise RuntimeError(f"GanStep: {len(self.pending)} pending micro-batches for accum_steps = {k}")
        gen, disc = self.generator, self.discriminator
        t0 = time.perf_counter()
        with sync_grads(gen, k == 1):
            first = self._forward(clean[parts[0]], noisy[parts[0]])
        self._sync(device)
        t1 = time.perf_counter()

        # Discriminator: real pairs of this step, fake pairs of the previous step with their PESQ.
        targets: list[torch.Tensor | None] = [None] * k
        if self.pending is not None:
            w0 = time.perf_counter()
            targets = [pesq_to_target(p.scores.result()) for p in self.pending]
            self.timings["pesq_wait_s"] += time.perf_counter() - w0
            self.pesq_skipped_batches += sum(target is None for target in targets)
        self.opt_d.zero_grad(set_to_none=True)
        d_losses = []
        for i, part in enumerate(parts):
            clean_mag = first[0].clean_mag if i == 0 else self.frontend.analyse(clean[part])[0]
            target = targets[i]
            with sync_grads(disc, i == k - 1), power_iteration(disc, i == 0):
                if target is not None:
                    # one forward over real and fake together: DDP allows one forward per backward
                    prev = self.pending[i]
                    b = clean_mag.shape[0]
                    out = disc(torch.cat([clean_mag, prev.clean_mag]), torch.cat([clean_mag, prev.est_mag]))
                    loss_d = discriminator_loss(out[:b], out[b:], target.to(device))
                else:
                    loss_d = discriminator_loss(disc(clean_mag, clean_mag), None, None)
                (loss_d / k).backward()
            d_losses.append(float(loss_d.detach()))
        self.opt_d.step()
        self._sync(device)
        t2 = time.perf_counter()

        # Generator: metric loss through the (frozen, unsynchronised) discriminator.
        d_core = getattr(disc, "module", disc)
        self.opt_g.zero_grad(set_to_none=True)
        rows, pending = [], []
        d_core.requires_grad_(False)
        try:
            for i, part in enumerate(parts):
                with sync_grads(gen, i == k - 1):
                    s, scores = first if i == 0 else self._forward(clean[part], noisy[part])
                    metric = None
                    if self.loss_weights.metric != 0:
                        with power_iteration(d_core, i == 0):
                            metric = d_core(s.clean_mag, s.est_mag)
                    losses = s.losses(clean[part], metric, self.loss_weights)
                    (losses["total"] / k).backward()
                pending.append(_Pending(s.clean_mag.detach(), s.est_mag.detach(), scores))
                rows.append({f"g_{name}": float(v.detach()) for name, v in losses.items()})
                first = None  # its graph is freed: one micro-batch's graph alive at a time
        finally:
            d_core.requires_grad_(True)
        apply_step(self.opt_g, gen.parameters(), self.grad_clip)
        self.pending = pending
        self._sync(device)
        t3 = time.perf_counter()
        self.timings["g_s"] += (t1 - t0) + (t3 - t2)
        self.timings["d_s"] += t2 - t1
        out = mean_losses(rows)
        out["d_loss"] = sum(d_losses) / k
        return check_finite(out)


class MetricGanTask(Task):
    """Generator (the model) + metric discriminator, train.optimizer each, ExponentialLR per epoch."""

    name = "metric_gan"
    totals = ("g_total", "d_loss", "g_metric")  # generator (g_*) and discriminator (d_loss) losses

    def __init__(self, model: EnhancementModel, params: Params | dict[str, Any], lr: float, device: torch.device,
                 pesq: PesqPool, amp: bool = False):
        super().__init__(model, params, lr, device)
        train = self.params.train
        self.discriminator = build_discriminator(self.params.discriminator).to(device)
        self.opt_g = make_optimizer(model.parameters(), train, lr)
        self.opt_d = make_optimizer(self.discriminator.parameters(), train, lr)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, gamma=train.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, gamma=train.lr_decay)
        self.gan = GanStep(model, self.discriminator, self.opt_g, self.opt_d, model.frontend, train.loss_weights,
                           pesq, amp=amp, grad_clip=train.grad_clip, accum_steps=train.grad_accum_steps)

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
        pending = self.gan.pending  # the discriminator's next fake micro-batches: part of an exact resume
        return {
            "discriminator": self.discriminator.state_dict(), "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(), "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "pending": None if pending is None else [
                {"clean_mag": p.clean_mag.cpu(), "est_mag": p.est_mag.cpu(), "scores": p.scores.result()}
                for p in pending],
            "pesq_skipped": self.gan.pesq_skipped_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        pending = state["pending"]
        if isinstance(pending, dict):  # saved before gradient accumulation: one batch
            pending = [pending]
        if pending is not None:
            self.gan.pending = [_Pending(p["clean_mag"].to(self.device), p["est_mag"].to(self.device),
                                         _Scored(p["scores"])) for p in pending]
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
