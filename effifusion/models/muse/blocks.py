"""MUSE's building blocks (Lin et al., Interspeech 2024), written from its public code's equations.

Read from huaidanquede/MUSE-Speech-Enhancement @ 38dfcb1 (MIT, © 2024 Zizhen Lin): models/MUSE_net.py.
Tensors are [B, C, T, F] feature maps. What each block computes:

- ``DeformableEmbedding`` (DE): offsets from a depthwise 3×3 then a 1×1 conv (18 channels: (dy, dx) per
  tap, shared by all channels), clamped to [−1, 1]; a depthwise deformable 3×3 conv sampling the input
  bilinearly at the offset taps (zero outside); a 1×1 conv; Hardswish.
- ``TaylorAttention`` (the MET attention): q, k, v from a 1×1 then a depthwise 3×3 conv, L2-normalised
  per head; softmax replaced by its first-order Taylor expansion, so attention is linear in length:
  out_i = (Σ_j v_j + q_i·(Σ_j k_jᵀ v_j)) / (N + q_i·Σ_j k_j), times a learned per-head temperature and by
  a "compensation" weight (sigmoid of a grouped k×k conv over each head's q and k as images); then
  gated by channel attention (global mean → 1×1) and by GELU of a spatial branch (1×1 → depthwise 3×3).
- ``MetBlock``: bias-free LayerNorm → attention → residual; LayerNorm → gated depthwise FFN → residual.
- ``PathFusion``: MUSE's SKFF with one path (num_path = 1 everywhere): its softmax over a single path
  is exactly 1, so it passes its input through; the weights are kept because the checkpoint has them.
- ``Downsample`` / ``Upsample``: depthwise 3×3 → 1×1 → Pixel(Un)Shuffle(2) (T and F halve / double).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effifusion.models import onnx_forms

# MET's compensation windows per head count ({kernel: heads}), as in MUSE_net.Attention
MET_WINDOWS = {1: {3: 1}, 2: {3: 2}, 4: {3: 2, 5: 2}, 8: {3: 2, 5: 3, 7: 3}}
FFN_EXPANSION = 2.66


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm over channels without mean subtraction or bias: x / sqrt(var_c(x) + 1e-5) · w."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + 1e-5) * self.weight.view(1, -1, 1, 1)


class GatedFeedForward(nn.Module):
    """1×1 to 2h, depthwise 3×3, GELU(first half) · second half, 1×1 back (h = int(dim · 2.66))."""

    def __init__(self, dim: int, expansion: float = FFN_EXPANSION):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = onnx_forms.split_channels(self.dw(self.project_in(x)), 2)
        return self.project_out(F.gelu(a) * b)


class TaylorAttention(nn.Module):
    """MUSE's MET attention (see the module docstring); linear in the number of positions."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if heads not in MET_WINDOWS:
            raise ValueError(f"MET attention takes 1, 2, 4 or 8 heads, got {heads}")
        self.heads = heads
        self.channel_gate = nn.Conv2d(dim, dim, 1)
        self.spatial_in = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.spatial_dw = nn.Conv2d(dim * 2, dim, 3, padding=1, groups=dim, bias=False)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)
        c = dim // heads
        self.windows = MET_WINDOWS[heads]
        self.compensation = nn.ModuleList(
            nn.Conv2d(n * 2 * c, n, w, padding=w // 2, groups=n) for w, n in self.windows.items())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dim, t, f = x.shape
        h, c, n = self.heads, dim // self.heads, t * f
        gate = self.channel_gate(x.mean(dim=(2, 3), keepdim=True))
        spatial = self.spatial_dw(self.spatial_in(x))
        q, k, v = onnx_forms.split_channels(self.qkv_dw(self.qkv(x)), 3)
        q = q.reshape(b, h, c, n).transpose(-1, -2)  # [b, h, N, c]
        k = k.reshape(b, h, c, n)                    # [b, h, c, N]
        v = v.reshape(b, h, c, n).transpose(-1, -2)  # [b, h, N, c]
        q = q / (torch.linalg.vector_norm(q, dim=-1, keepdim=True) + 1e-6)
        k = k / (torch.linalg.vector_norm(k, dim=-2, keepdim=True) + 1e-6)
        qk = torch.cat((q.transpose(-1, -2).reshape(b, h, c, t, f), k.reshape(b, h, c, t, f)), dim=2)
        parts = onnx_forms.split_channels(qk.reshape(b, h * 2 * c, t, f), [m * 2 * c for m in self.windows.values()])
        weight = torch.sigmoid(torch.cat([conv(p) for conv, p in zip(self.compensation, parts)], dim=1))
        numerator = v.sum(dim=-2, keepdim=True) + q @ (k @ v)
        denominator = n + q @ k.sum(dim=-1, keepdim=True) + 1e-6
        out = numerator / denominator * self.temperature * weight.reshape(b, h, n, 1)
        out = out.transpose(-1, -2).reshape(b, dim, t, f)
        return self.proj(out * gate * F.gelu(spatial))

    def matmul_macs(self, t: int, f: int) -> int:
        """MACs of the attention products on a t×f map (k·v, q·(kv), q·Σk), for models/cost.py."""
        dim = self.qkv.in_channels
        c, n = dim // self.heads, t * f
        return self.heads * (2 * n * c * c + n * c)


class MetBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, dim: int, attention: nn.Module, expansion: float = FFN_EXPANSION):
        super().__init__()
        self.norm1 = BiasFreeLayerNorm(dim)
        self.attn = attention
        self.norm2 = BiasFreeLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def deform_depthwise3x3(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise deformable 3×3 convolution (stride 1, padding 1, one offset group).

    x [B, C, H, W]; offset [B, 18, H, W] holding (dy, dx) per tap, taps in row-major order (the layout
    of torchvision.ops.deform_conv2d); weight [C, 1, 3, 3]. Tap (i, j) of output (y, x) samples the input
    bilinearly at (y + i − 1 + dy, x + j − 1 + dx), zero outside. All nine taps are sampled by one
    grid_sample (exported as ONNX GridSample); align_corners=False keeps 1-pixel maps well defined.
    """
    b, c, h, w = x.shape
    dy, dx = offset[:, 0::2], offset[:, 1::2]  # [B, 9, H, W]
    taps = torch.arange(9, device=x.device)
    ty = (taps // 3 - 1).to(x.dtype).view(1, 9, 1, 1)
    tx = (taps % 3 - 1).to(x.dtype).view(1, 9, 1, 1)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1) + ty + dy
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w) + tx + dx
    grid = torch.stack(((2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1), dim=-1).reshape(b, 9 * h, w, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (sampled.reshape(b, c, 9, h, w) * weight.reshape(1, c, 9, 1, 1)).sum(dim=2)


class DeformableEmbedding(nn.Module):
    """MUSE's DE: offsets → depthwise deformable 3×3 → 1×1 → Hardswish (see the module docstring)."""

    def __init__(self, dim: int, offset_clamp: float = 1.0):
        super().__init__()
        self.offset_clamp = float(offset_clamp)
        self.offset_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.offset_pw = nn.Conv2d(dim, 18, 1, bias=False)
        self.deform_weight = nn.Parameter(torch.empty(dim, 1, 3, 3))
        nn.init.kaiming_uniform_(self.deform_weight, a=5 ** 0.5)
        self.pointwise = nn.Conv2d(dim, dim, 1, bias=False)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_pw(self.offset_dw(x)).clamp(-self.offset_clamp, self.offset_clamp)
        return self.act(self.pointwise(deform_depthwise3x3(x, offset, self.deform_weight)))

    def extra_macs(self, t: int, f: int) -> int:
        """The deformable conv's MACs (9 taps × 4 bilinear corners per channel and position)."""
        return self.deform_weight.shape[0] * t * f * 9 * 5


class PathFusion(nn.Module):
    """MUSE's SKFF over one path: global mean → 1×1 → PReLU → 1×1 → softmax over the single path (= 1)."""

    def __init__(self, dim: int, reduction: int = 8):
        super().__init__()
        d = max(dim // reduction, 4)
        self.squeeze = nn.Conv2d(dim, d, 1, bias=False)
        self.act = nn.PReLU()
        self.excite = nn.Conv2d(d, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.excite(self.act(self.squeeze(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.softmax(logits.unsqueeze(1), dim=1).squeeze(1)


class Downsample(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.pw = nn.Conv2d(dim, out // 4, 1, bias=False)
        self.shuffle = nn.PixelUnshuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.pw(self.dw(x)))


class Upsample(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.pw = nn.Conv2d(dim, out * 4, 1, bias=False)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.pw(self.dw(x)))
