"""NCSN++'s building blocks (Song et al. 2021, as sp-uhh/sgmse uses them; written from their equations).

- FIR resampling with the [1, 3, 3, 1] kernel (upfirdn2d): ``fir_down`` is a depthwise stride-2 conv of
  the normalised 4×4 outer product with one sample of padding per side; ``fir_up`` the depthwise
  stride-2 transposed conv of 4× that kernel with padding 1, which equals zero-insertion followed by
  upfirdn2d's (2, 1) padding for a symmetric kernel (tests/models/sgmse check both against upfirdn2d).
- BigGAN residual blocks (GroupNorm, swish, 3×3 conv, time embedding added, skip 1×1 conv when the
  shape changes, (x + h)/√2) and the channel self-attention block over every (F, T) position.
- DDPM initialisation: variance scaling, fan-average, uniform; the last conv of each residual branch
  starts at (almost) zero, so every block starts as the identity path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FIR = (1.0, 3.0, 3.0, 1.0)


def ddpm_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Variance scaling (fan_avg, uniform) in place; scale 0 means 1e-10 (a zero-initialised branch)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3 * scale / ((fan_in + fan_out) / 2))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv(in_ch: int, out_ch: int, kernel: int = 3, init_scale: float = 1.0) -> nn.Conv2d:
    layer = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    ddpm_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def linear(in_f: int, out_f: int) -> nn.Linear:
    layer = nn.Linear(in_f, out_f)
    ddpm_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(ch // 4, 32), ch, eps=1e-6)


def _fir_kernel(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k = torch.tensor(FIR, device=device, dtype=dtype)
    k2 = k[:, None] * k[None, :]
    return k2 / k2.sum()


def fir_down(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H/2, W/2] (upfirdn2d(x, k, down=2, pad=(1, 1)))."""
    c = x.shape[1]
    k = _fir_kernel(x.device, x.dtype)[None, None].expand(c, 1, 4, 4)
    return F.conv2d(x, k, stride=2, padding=1, groups=c)


def fir_up(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, 2H, 2W] (upfirdn2d(x, 4k, up=2, pad=(2, 1)))."""
    c = x.shape[1]
    k = (4 * _fir_kernel(x.device, x.dtype))[None, None].expand(c, 1, 4, 4)
    return F.conv_transpose2d(x, k, stride=2, padding=1, groups=c)


class FourierEmbedding(nn.Module):
    """Gaussian Fourier features of log t: [sin 2πWs, cos 2πWs], W ~ N(0, scale²) fixed at init."""

    def __init__(self, size: int, scale: float):
        super().__init__()
        self.register_buffer("W", torch.randn(size) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = torch.log(t)[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class ResBlock(nn.Module):
    """BigGAN++ residual block, optionally resampling (FIR) both paths."""

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None, up: bool = False,
                 down: bool = False):
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm0, self.conv0 = group_norm(in_ch), conv(in_ch, out_ch)
        self.temb = linear(temb_dim, out_ch) if temb_dim else None
        self.norm1, self.conv1 = group_norm(out_ch), conv(out_ch, out_ch, init_scale=0.0)
        self.skip = conv(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None
        self.up, self.down = up, down

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.up:
            h, x = fir_up(h), fir_up(x)
        elif self.down:
            h, x = fir_down(h), fir_down(x)
        h = self.conv0(h)
        if self.temb is not None and temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv1(F.silu(self.norm1(h)))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Self-attention over all H·W positions with 1×1 q, k, v, out projections; (x + out)/√2."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = group_norm(ch)
        self.q, self.k, self.v = conv(ch, ch, 1, 0.1), conv(ch, ch, 1, 0.1), conv(ch, ch, 1, 0.1)
        self.out = conv(ch, ch, 1, init_scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (f(n).reshape(b, c, h * w) for f in (self.q, self.k, self.v))
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=-1)  # [B, HW, HW]
        a = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return (x + self.out(a)) / math.sqrt(2.0)
