"""NCSN++ split at its bottleneck: an encoder (time embedding, down-path, middle) and a decoder (up-path
with the output-skip pyramid), so the joint model can attach a second decoder to a shared encoder.

Layout (score_sde's NCSN++ as configured in sp-uhh/sgmse backbones/ncsnpp.py): input 4 channels
(Re/Im of x_t and y) → 3×3 conv to nf; per level ``res_blocks`` BigGAN blocks to nf·ch_mult[i]
(attention after each where the frequency size is in ``attn_resolutions``), then a downsampling block
and the input-skip pyramid (FIR-downsampled input, 1×1 conv, summed); middle: block, attention, block.
Up-path: per level res_blocks + 1 blocks on [h, skip], attention, the output-skip pyramid (GroupNorm,
swish, 3×3 conv to 4 channels, added to the FIR-upsampled pyramid), an upsampling block. The pyramid
(4 channels) is the decoder's output; the model divides it by t (score decoder) and maps it to 2
channels (Re/Im) with a 1×1 conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effifusion.models.sgmse.layers import (
    AttnBlock,
    FourierEmbedding,
    ResBlock,
    conv,
    fir_down,
    fir_up,
    group_norm,
    linear,
)

IN_CHANNELS = 4  # Re/Im of x_t, Re/Im of y


class Encoder(nn.Module):
    """(x [B, 4, F, T], t [B]) -> (bottleneck h, skips, time embedding); T a multiple of 2^(levels-1)."""

    def __init__(self, nf: int, ch_mult: list[int], res_blocks: int, attn_resolutions: list[int], n_bins: int,
                 fourier_scale: float = 16.0):
        super().__init__()
        temb_dim = 4 * nf
        self.fourier = FourierEmbedding(nf, fourier_scale)
        self.temb0, self.temb1 = linear(2 * nf, temb_dim), linear(temb_dim, temb_dim)
        self.conv_in = conv(IN_CHANNELS, nf)
        self.attn_resolutions = set(attn_resolutions)
        self.levels = nn.ModuleList()
        self.skip_channels = [nf]
        ch, res = nf, n_bins
        for i, mult in enumerate(ch_mult):
            level = nn.Module()
            level.blocks, level.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(res_blocks):
                level.blocks.append(ResBlock(ch, nf * mult, temb_dim))
                ch = nf * mult
                level.attns.append(AttnBlock(ch) if res in self.attn_resolutions else nn.Identity())
                self.skip_channels.append(ch)
            if i < len(ch_mult) - 1:
                level.down = ResBlock(ch, temb_dim=temb_dim, down=True)
                level.combine = conv(IN_CHANNELS, ch, 1)  # the input-skip pyramid, summed
                self.skip_channels.append(ch)
                res //= 2
            self.levels.append(level)
        self.mid0, self.mid_attn = ResBlock(ch, temb_dim=temb_dim), AttnBlock(ch)
        self.mid1 = ResBlock(ch, temb_dim=temb_dim)
        self.out_channels = ch

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        temb = self.temb1(F.silu(self.temb0(self.fourier(t))))
        pyramid = x
        hs = [self.conv_in(x)]
        for level in self.levels:
            for block, attn in zip(level.blocks, level.attns):
                hs.append(attn(block(hs[-1], temb)))
            if hasattr(level, "down"):
                h = level.down(hs[-1], temb)
                pyramid = fir_down(pyramid)
                hs.append(level.combine(pyramid) + h)
        h = self.mid1(self.mid_attn(self.mid0(hs[-1], temb)), temb)
        return h, hs, temb


class Decoder(nn.Module):
    """(h, skips, temb) -> the 4-channel output pyramid [B, 4, F, T] (an up-path of NCSN++)."""

    def __init__(self, encoder: Encoder, nf: int, ch_mult: list[int], res_blocks: int, attn_resolutions: list[int],
                 n_bins: int):
        super().__init__()
        temb_dim = 4 * nf
        skips = list(encoder.skip_channels)
        ch = encoder.out_channels
        n_levels = len(ch_mult)
        self.levels = nn.ModuleList()
        for i in reversed(range(n_levels)):
            res = n_bins // 2 ** i
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(res_blocks + 1):
                level.blocks.append(ResBlock(ch + skips.pop(), nf * ch_mult[i], temb_dim))
                ch = nf * ch_mult[i]
            level.attn = AttnBlock(ch) if res in set(attn_resolutions) else nn.Identity()
            level.norm, level.to_pyramid = group_norm(ch), conv(ch, IN_CHANNELS, init_scale=0.0)
            if i > 0:
                level.up = ResBlock(ch, temb_dim=temb_dim, up=True)
            self.levels.append(level)
        assert not skips

    def forward(self, h: torch.Tensor, hs: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        hs = list(hs)
        pyramid = None
        for level in self.levels:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            h = level.attn(h)
            out = level.to_pyramid(F.silu(level.norm(h)))
            pyramid = out if pyramid is None else fir_up(pyramid) + out
            if hasattr(level, "up"):
                h = level.up(h, temb)
        return pyramid
