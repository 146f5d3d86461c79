"""IMSE's two swaps into MUSE (Tang, Qin, Li, arXiv 2511.14515), written from the operators' equations.

IMSE's own code is not public; what is known is tagged in docs/models.md (IMSE). Both operators are
re-implemented from their papers' equations (MALA's repository has no licence; InceptionNeXt is
Apache-2.0; no code is copied):

- ``MagnitudeAwareLinearAttention`` (MALA, Fan et al., ICCV 2025): one 1×1 conv gives q, k, v and a
  gate o; φ(x) = ELU(x) + 1 on q and k; s = head_dim^−½;
  z_i = s·φ(q_i)·mean_j φ(k_j);  out_i = (1 + 1/z_i)·φ(q_i)·(Σ_j φ(k_j)ᵀ v_j)·s/N − z_i·mean_j v_j.
  The effective weights sum to 1 and sharpen as ‖q_i‖ grows (the "magnitude awareness"). Then LePE
  (depthwise 5×5 on v) is added, the result gated by o and projected by a 1×1 conv.
  [INF] MALA's RoPE is left out (its 2-D image RoPE has no stated spectrogram form); with the o-gate
  and LePE kept, all seven stages swapped give 427,619 parameters, 0.427 M as IMSE reports.
- ``InceptionDepthwiseConv`` (IDConv, InceptionNeXt): channels split into an identity part and three
  groups of ⌊ratio·C⌋ channels through a depthwise 3×3, a 1×11 (along frequency) and an 11×1 (along
  time) conv. [INF] InceptionNeXt's defaults (3, 11, ratio 0.125); it replaces MUSE's whole
  deformable embedding (the 1×1 and Hardswish after it go too: the reading that gives 0.427 M).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effifusion.models import onnx_forms

SQUARE_KERNEL = 3
BAND_KERNEL = 11
BRANCH_RATIO = 0.125


class MagnitudeAwareLinearAttention(nn.Module):
    """MALA without RoPE (see the module docstring); linear in the number of positions."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MALA: {heads} heads do not divide {dim} channels")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkvo = nn.Conv2d(dim, dim * 4, 1)
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, dim, t, f = x.shape
        h, c, n = self.heads, dim // self.heads, t * f
        q, k, v, o = onnx_forms.split_channels(self.qkvo(x), 4)
        lepe = self.lepe(v)
        q, k, v = (z.reshape(b, h, c, n).transpose(-1, -2) for z in (q, k, v))  # [b, h, N, c]
        q, k = F.elu(q) + 1, F.elu(k) + 1
        z = q @ k.mean(dim=-2, keepdim=True).transpose(-1, -2) * self.scale   # [b, h, N, 1]
        kv = (k.transpose(-1, -2) @ v) * (self.scale / n)                      # [b, h, c, c]
        out = (q @ kv) * (1 + 1 / (z + 1e-6)) - z * v.mean(dim=-2, keepdim=True)
        out = out.transpose(-1, -2).reshape(b, dim, t, f) + lepe
        return self.proj(out * o)

    def matmul_macs(self, t: int, f: int) -> int:
        """MACs of q·mean k, kᵀv and q·kv on a t×f map, for models/cost.py."""
        dim = self.qkvo.in_channels
        c, n = dim // self.heads, t * f
        return self.heads * (n * c + 2 * n * c * c)


class InceptionDepthwiseConv(nn.Module):
    """IDConv: identity | depthwise 3×3 | 1×11 | 11×1 over channel groups (see the module docstring)."""

    def __init__(self, dim: int, square: int = SQUARE_KERNEL, band: int = BAND_KERNEL, ratio: float = BRANCH_RATIO):
        super().__init__()
        gc = int(dim * ratio)
        if gc < 1:
            raise ValueError(f"IDConv: {dim} channels give no convolved group at ratio {ratio}")
        self.splits = (dim - 3 * gc, gc, gc, gc)
        self.square = nn.Conv2d(gc, gc, square, padding=square // 2, groups=gc)
        self.along_freq = nn.Conv2d(gc, gc, (1, band), padding=(0, band // 2), groups=gc)
        self.along_time = nn.Conv2d(gc, gc, (band, 1), padding=(band // 2, 0), groups=gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ident, a, b, c = onnx_forms.split_channels(x, self.splits)
        return torch.cat((ident, self.square(a), self.along_freq(b), self.along_time(c)), dim=1)
