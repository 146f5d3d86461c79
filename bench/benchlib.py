"""Pieces the training benchmarks share: synthetic batches, model + optimizers, a GanStep, peak memory.

Imported by bench/bench_train.py and bench/gpu_check.py (both run as scripts, so this folder is on
sys.path). Synthetic speech-like batches come from tests/helpers.py (no dataset needed); the step
is the training stages' own GanStep.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from effifusion.core.config import load_params  # noqa: E402
from effifusion.dsp.stft import StftFrontEnd  # noqa: E402
from effifusion.models.discriminator import build_discriminator  # noqa: E402
from effifusion.models.registry import build_model, check_model_config  # noqa: E402
from effifusion.training.pesq_pool import PesqPool  # noqa: E402
from effifusion.training.tasks.metric_gan import GanStep  # noqa: E402
from helpers import synthetic_speech  # noqa: E402

__all__ = ["ROOT", "PesqPool", "GanStep", "load_preset", "synthetic_batch", "build_models", "make_step",
           "reset_timings", "reset_peak", "peak_mib"]


def load_preset(name: str | None, params_file: str | Path | None = None) -> dict[str, Any]:
    """presets/NAME.yaml when a name is given, else the params file (default: params.yaml)."""
    return load_params(ROOT / "presets" / f"{name}.yaml" if name else (params_file or ROOT / "params.yaml"))


def synthetic_batch(batch_size: int, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, noisy) [B, samples]: synthetic voiced speech plus white noise, RMS-normalised as in data.py."""
    rng = np.random.default_rng(seed)
    clean = np.stack([synthetic_speech(samples / 16000, seed + i) for i in range(batch_size)])
    noisy = clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
    g = np.sqrt(samples / (noisy**2).sum(-1, keepdims=True))
    return torch.from_numpy(clean * g), torch.from_numpy(noisy * g)


def build_models(params: dict[str, Any], device: torch.device, seed: int = 0, lr: float | None = None):
    """Generator, discriminator and their AdamW optimizers (train.lr / train.betas unless lr is given)."""
    torch.manual_seed(seed)
    tc = params["train"]
    g = build_model(params["model"], params["audio"]["sample_rate"]).to(device)
    d = build_discriminator(params["discriminator"]).to(device)
    lr = float(tc["lr"]) if lr is None else lr
    betas = tuple(float(b) for b in tc["betas"])
    opt_g = torch.optim.AdamW(g.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.AdamW(d.parameters(), lr=lr, betas=betas)
    return g, d, opt_g, opt_d


def make_step(params: dict[str, Any], g_train: torch.nn.Module, d_train: torch.nn.Module, opt_g, opt_d,
              pool: PesqPool, amp: bool) -> GanStep:
    """The training stages' GanStep over (possibly DDP- or compile-wrapped) models."""
    tc = params["train"]
    frontend = StftFrontEnd.from_config(check_model_config(params["model"]))
    return GanStep(g_train, d_train, opt_g, opt_d, frontend, tc["loss_weights"], pool, amp=amp,
                   grad_clip=float(tc.get("grad_clip", 0.0)))


def reset_timings(step: GanStep) -> None:
    for k in step.timings:
        step.timings[k] = 0.0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """Peak memory in MiB: torch.cuda.max_memory_allocated on CUDA, else the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
