"""Generator and discriminator losses of the MP-SENet / EffiFusion-GAN recipe (docs/reference.md §2).

Tensors follow effifusion.dsp.audio: magnitude and phase [B, F, T], complex [B, F, T, 2], all on the
power-law compressed scale; waveforms [B, N].

Weights come from params.yaml ``train.loss_weights``. MP-SENet's code multiplies the complex and
consistency MSEs by 2 and weights them 0.1; here both terms are the plain MSE and the weights are
0.2, which is the same objective with weights that read as they act.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from effifusion.core.settings import LossWeights, as_settings

LOSS_TERMS = ("metric", "magnitude", "phase", "complex", "time", "consistency")
PESQ_MIN, PESQ_RANGE = 1.0, 3.5  # wide-band PESQ spans [1, 4.5] -> target in [0, 1]
TWO_PI = 2.0 * math.pi


def anti_wrapping(x: torch.Tensor) -> torch.Tensor:
    """|x - 2π·round(x / 2π)|: the distance of a phase difference to the nearest multiple of 2π."""
    return torch.abs(x - TWO_PI * torch.round(x / TWO_PI))


def phase_losses(
    pha_true: torch.Tensor, pha_est: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(instantaneous phase, group delay, instantaneous angular frequency) losses on [B, F, T].

    Group delay differentiates along frequency (dim 1), angular frequency along time (dim 2);
    every difference goes through anti_wrapping so a 2π jump costs nothing.
    """
    _check_same_shape("phase", pha_true, pha_est)
    ip = anti_wrapping(pha_true - pha_est).mean()
    gd = anti_wrapping(torch.diff(pha_true, dim=1) - torch.diff(pha_est, dim=1)).mean()
    iaf = anti_wrapping(torch.diff(pha_true, dim=2) - torch.diff(pha_est, dim=2)).mean()
    return ip, gd, iaf


def generator_losses(
    clean_wav: torch.Tensor,
    est_wav: torch.Tensor,
    clean_mag: torch.Tensor,
    clean_pha: torch.Tensor,
    clean_com: torch.Tensor,
    est_mag: torch.Tensor,
    est_pha: torch.Tensor,
    est_com: torch.Tensor,
    est_com_consistent: torch.Tensor,
    metric_score: torch.Tensor | None,
    weights: LossWeights | Mapping[str, float],
) -> dict[str, torch.Tensor]:
    """Every generator loss term plus ``total`` = Σ weights.k · term[k] (``train.loss_weights``; a mapping
    is checked like params.yaml's section).

    ``metric_score`` is D(clean_mag, est_mag) (the metric loss pushes it to 1); it may be None only
    when ``weights.metric`` is 0. ``est_com_consistent`` is STFT(iSTFT(est)) computed by the
    caller, so the consistency term penalises spectra that no waveform has.
    """
    w = as_settings(weights, LossWeights)
    if metric_score is None:
        if w.metric != 0:
            raise ValueError("generator_losses: metric_score is None but the metric loss weight is not 0")
        metric = est_mag.new_zeros(())
    else:
        metric = F.mse_loss(metric_score.flatten(), torch.ones_like(metric_score.flatten()))
    for name, a, b in (
        ("waveform", clean_wav, est_wav),
        ("magnitude", clean_mag, est_mag),
        ("complex", clean_com, est_com),
        ("consistency", est_com, est_com_consistent),
    ):
        _check_same_shape(name, a, b)
    ip, gd, iaf = phase_losses(clean_pha, est_pha)
    terms = {
        "metric": metric,
        "magnitude": F.mse_loss(est_mag, clean_mag),
        "phase": ip + gd + iaf,
        "complex": F.mse_loss(est_com, clean_com),
        "time": F.l1_loss(est_wav, clean_wav),
        "consistency": F.mse_loss(est_com, est_com_consistent),
    }
    # terms weighted 0 stay out of the graph: 0 · a NaN gradient (e.g. atan2 at the origin) is still NaN
    terms["total"] = sum(getattr(w, k) * terms[k] for k in LOSS_TERMS if getattr(w, k) != 0)
    return terms


def discriminator_loss(
    d_real: torch.Tensor, d_fake: torch.Tensor | None, pesq_target: torch.Tensor | None
) -> torch.Tensor:
    """MSE(D(clean, clean), 1) + MSE(D(clean, enhanced), PESQ_norm).

    ``pesq_target`` is None when a PESQ in the batch failed (see pesq_to_target): then only the real
    term is trained, as in MP-SENet. ``d_fake`` may be None in that case too.
    """
    real = F.mse_loss(d_real.flatten(), torch.ones_like(d_real.flatten()))
    if pesq_target is None:
        return real
    if d_fake is None:
        raise ValueError("discriminator_loss: a PESQ target was given without d_fake")
    fake = d_fake.flatten()
    target = pesq_target.to(device=fake.device, dtype=fake.dtype).flatten()
    if target.shape != fake.shape:
        raise ValueError(f"discriminator_loss: {target.numel()} PESQ targets for {fake.numel()} D outputs")
    return real + F.mse_loss(fake, target)


def pesq_to_target(pesq_scores: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor | None:
    """Wide-band PESQ scores -> discriminator targets (PESQ − 1) / 3.5 as float32 [B].

    Returns None when any score is NaN (a failed PESQ): MP-SENet then skips the batch's fake term
    rather than train D on a made-up target.
    """
    scores = torch.as_tensor(np.asarray(pesq_scores, dtype=np.float32)).flatten()
    if scores.numel() == 0 or not bool(torch.isfinite(scores).all()):
        return None
    return (scores - PESQ_MIN) / PESQ_RANGE


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    # F.mse_loss would broadcast mismatched shapes with only a warning: a silently wrong loss.
    if a.shape != b.shape:
        raise ValueError(f"{name} loss: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
