"""Metric discriminator (MP-SENet / MetricGAN style, docs/reference.md §2).

It predicts the normalised PESQ of a (clean, other) pair of compressed magnitudes, so the
generator can be trained towards a non-differentiable metric. Output in (0, 1) via a learnable
sigmoid with β = 1; spectral norm on every conv and linear keeps it Lipschitz-bounded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from effifusion.core.settings import DiscriminatorConfig, as_settings


class LearnableSigmoid1d(nn.Module):
    """β · sigmoid(slope · x) with a learnable slope per feature."""

    def __init__(self, in_features: int, beta: float = 1.0):
        super().__init__()
        self.beta = float(beta)
        self.slope = nn.Parameter(torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.sigmoid(self.slope * x)


def _down_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [
        spectral_norm(nn.Conv2d(in_ch, out_ch, (4, 4), (2, 2), (1, 1), bias=False)),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.PReLU(out_ch),
    ]


class MetricDiscriminator(nn.Module):
    """D(x, y): x, y compressed magnitudes [B, F, T] (clean first) → score [B, 1] in (0, 1).

    4 × (SN conv 4×4 stride 2, no bias, IN, PReLU) with channels c, 2c, 4c, 8c → adaptive max pool →
    SN linear 8c→4c → dropout 0.3 → PReLU → SN linear 4c→1 → learnable sigmoid (β = 1).
    Inputs need F, T ≥ 16 (four stride-2 halvings).
    """

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        self.layers = nn.Sequential(
            *_down_block(2, c), *_down_block(c, 2 * c),
            *_down_block(2 * c, 4 * c), *_down_block(4 * c, 8 * c),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            spectral_norm(nn.Linear(8 * c, 4 * c)),
            nn.Dropout(0.3),
            nn.PReLU(4 * c),
            spectral_norm(nn.Linear(4 * c, 1)),
            LearnableSigmoid1d(1, beta=1.0),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 3:
            raise ValueError(
                f"expected two magnitudes [B, F, T] of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        return self.layers(torch.stack((x, y), dim=1))


def build_discriminator(disc_cfg: DiscriminatorConfig | dict[str, Any]) -> MetricDiscriminator:
    """MetricDiscriminator from params.yaml's ``discriminator`` section (a mapping is checked like it)."""
    return MetricDiscriminator(as_settings(disc_cfg, DiscriminatorConfig).channels)
