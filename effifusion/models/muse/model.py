"""MUSE (Lin et al., Interspeech 2024): a Mamba-free U-Net of linear-attention transformer stages
between an MP-SENet dense encoder and its magnitude-mask and phase decoders; 513,015 parameters at
its public configuration. IMSE (models/imse) is this network with two operators swapped, so the
swaps are settings here (``attention``, ``embedding``) and a paper ablation is one sweep.

Layout (read from the public code, huaidanquede/MUSE-Speech-Enhancement @ 38dfcb1, MIT; see
docs/models.md, MUSE). C = ``channels`` (16):

- front end: n_fft 510, hop 100, |X|^0.3 without epsilons, one RMS gain per utterance, and (its
  inference protocol) 30,700-sample segments, the last taken from the end (``segment_samples``);
- dense encoder: 1×1 conv (2 → C), dense block of 3×3 convs dilated 1, 2, 4, 8 along time, (1,3) conv
  with frequency stride 2: [B, C, T, 128];
- U-Net on (T, 128) with widths C / 2C / 3C: encoder levels 1 and 2, a latent level, decoder levels 2
  and 1 (skip concatenated, 1×1 reduced), then two refinement stages (magnitude, phase) each ending in
  a 3×3 conv plus the U-Net's input. A stage = embedding (DE or IDConv) + ``blocks`` MET blocks + the
  one-path fusion, plus its input. Down/up-sampling halves/doubles T and F, so T is padded to a
  multiple of 4 inside ``forward`` (zero frames, cropped after) and F/2 must divide by 4;
- mask decoder: dense block, 1×1 to 4C, PixelShuffle(2), depthwise (1,3) conv with time stride 2,
  1×1 to 1, learnable sigmoid (β 2) → mask on the noisy compressed magnitude; phase decoder: the same
  upsampling, then atan2 of two 1×1 convs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effifusion.dsp.stft import StftFrontEnd
from effifusion.models.base import MagnitudePhaseModel
from effifusion.models.blocks import DenseBlock, LearnableSigmoid2d
from effifusion.models.cost import traced_macs
from effifusion.models.muse.blocks import (
    DeformableEmbedding,
    Downsample,
    MetBlock,
    PathFusion,
    TaylorAttention,
    Upsample,
)
from effifusion.models.muse.config import MuseConfig


def muse_config() -> dict[str, Any]:
    """MUSE's public configuration (config.json and MUSE_net.py defaults): 513,015 parameters."""
    return {"arch": "muse", "n_fft": 510, "hop_length": 100, "win_length": 510, "compress_factor": 0.3,
            "segment_samples": 30700, "channels": 16, "dense_depth": 4, "heads": [1, 2, 8], "blocks": [4, 4, 4],
            "ffn_expansion": 2.66, "beta": 2.0, "attention": "met", "embedding": "deformable"}


class Stage(nn.Module):
    """Embedding → transformer blocks → one-path fusion, plus the stage's input."""

    def __init__(self, dim: int, heads: int, n_blocks: int, expansion: float, attention: str, embedding: str):
        super().__init__()
        from effifusion.models.imse.blocks import InceptionDepthwiseConv, MagnitudeAwareLinearAttention  # IMSE's swaps

        self.embed = DeformableEmbedding(dim) if embedding == "deformable" else InceptionDepthwiseConv(dim)
        make = TaylorAttention if attention == "met" else MagnitudeAwareLinearAttention
        self.blocks = nn.ModuleList(MetBlock(dim, make(dim, heads), expansion) for _ in range(n_blocks))
        self.fuse = PathFusion(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x)
        for block in self.blocks:
            y = block(y)
        return self.fuse(y) + x


class UNet(nn.Module):
    """[B, C, T, F'] → (magnitude features, phase features), both [B, C, T, F'] (T, F' multiples of 4)."""

    def __init__(self, dim: int, heads: list[int], blocks: list[int], expansion: float, attention: str,
                 embedding: str):
        super().__init__()
        d1, d2, d3 = dim, 2 * dim, 3 * dim

        def stage(d: int, level: int) -> Stage:
            return Stage(d, heads[level], blocks[level], expansion, attention, embedding)

        self.enc1, self.down1 = stage(d1, 0), Downsample(d1, d2)
        self.enc2, self.down2 = stage(d2, 1), Downsample(d2, d3)
        self.latent = stage(d3, 2)
        self.up2, self.reduce2, self.dec2 = Upsample(d3, d2), nn.Conv2d(2 * d2, d2, 1, bias=False), stage(d2, 1)
        self.up1, self.reduce1, self.dec1 = Upsample(d2, d1), nn.Conv2d(2 * d1, d1, 1, bias=False), stage(d1, 0)
        self.mag_refine, self.mag_out = stage(d1, 0), nn.Conv2d(d1, d1, 3, padding=1, bias=False)
        self.pha_refine, self.pha_out = stage(d1, 0), nn.Conv2d(d1, d1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(self.down1(e1))
        latent = self.latent(self.down2(e2))
        d2 = self.dec2(self.reduce2(torch.cat([self.up2(latent), e2], dim=1)))
        d1 = self.dec1(self.reduce1(torch.cat([self.up1(d2), e1], dim=1)))
        return self.mag_out(self.mag_refine(d1)) + x, self.pha_out(self.pha_refine(d1)) + x


class MuseEncoder(nn.Module):
    """[B, 2, T, F] → [B, C, T, F/2]: 1×1 conv, dense block, (1,3) conv with frequency stride 2 (padded)."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.input_conv = nn.Conv2d(2, channels, 1)
        self.input_norm = nn.InstanceNorm2d(channels, affine=True)
        self.input_act = nn.PReLU(channels)
        self.dense_block = DenseBlock(channels, depth, depthwise_separable=False)
        self.down_conv = nn.Conv2d(channels, channels, (1, 3), (1, 2), padding=(0, 1))
        self.down_norm = nn.InstanceNorm2d(channels, affine=True)
        self.down_act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense_block(self.input_act(self.input_norm(self.input_conv(x))))
        return self.down_act(self.down_norm(self.down_conv(x)))


class Upsampler(nn.Module):
    """Both decoders' way back to F bins: 1×1 to 4C, PixelShuffle(2) (2T, F), depthwise (1,3) conv with
    time stride 2 (T again)."""

    def __init__(self, channels: int):
        super().__init__()
        self.expand = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.shuffle = nn.PixelShuffle(2)
        self.dw = nn.Conv2d(channels, channels, (1, 3), (2, 1), padding=(0, 1), groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.shuffle(self.expand(x)))


class MaskDecoder(nn.Module):
    """[B, C, T, F/2] → magnitude mask [B, 1, T, F] in (0, β)."""

    def __init__(self, channels: int, depth: int, n_bins: int, beta: float):
        super().__init__()
        self.dense_block = DenseBlock(channels, depth, depthwise_separable=False)
        self.upsample = Upsampler(channels)
        self.mask_conv = nn.Conv2d(channels, 1, 1)
        self.mask_norm = nn.InstanceNorm2d(1, affine=True)
        self.mask_act = nn.PReLU(1)
        self.mask_out_conv = nn.Conv2d(1, 1, 1)
        self.lsigmoid = LearnableSigmoid2d(n_bins, beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(self.dense_block(x))
        x = self.mask_out_conv(self.mask_act(self.mask_norm(self.mask_conv(x))))
        return self.lsigmoid(x[:, 0].transpose(1, 2)).transpose(1, 2).unsqueeze(1)


class PhaseDecoder(nn.Module):
    """[B, C, T, F/2] → phase [B, 1, T, F] = atan2(pseudo-imaginary, pseudo-real)."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.dense_block = DenseBlock(channels, depth, depthwise_separable=False)
        self.upsample = Upsampler(channels)
        self.upsample_norm = nn.InstanceNorm2d(channels, affine=True)
        self.upsample_act = nn.PReLU(channels)
        self.real_conv = nn.Conv2d(channels, 1, 1)
        self.imag_conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample_act(self.upsample_norm(self.upsample(self.dense_block(x))))
        return torch.atan2(self.imag_conv(x), self.real_conv(x))


class Muse(MagnitudePhaseModel):
    """MUSE / IMSE. forward: (mag, pha) [B, F, T] → (mag, pha [B, F, T], com [B, F, T, 2])."""

    arch = "muse"

    Config = MuseConfig

    def __init__(self, cfg: MuseConfig, sample_rate: int):
        super().__init__(cfg, sample_rate)
        self.frontend = StftFrontEnd.from_config(cfg, exact_polar=True, segment_samples=cfg.segment_samples)
        c, depth = cfg.channels, cfg.dense_depth
        self.n_bins = self.frontend.n_bins
        self.encoder = MuseEncoder(c, depth)
        self.unet = UNet(c, list(cfg.heads), list(cfg.blocks), cfg.ffn_expansion, cfg.attention, cfg.embedding)
        self.mask_decoder = MaskDecoder(c, depth, self.n_bins, cfg.beta)
        self.phase_decoder = PhaseDecoder(c, depth)

    def forward(self, noisy_mag: torch.Tensor, noisy_pha: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_bins(noisy_mag)
        t = noisy_mag.shape[-1]
        pad = (4 - t % 4) % 4  # the U-Net halves T twice
        mag = F.pad(noisy_mag, (0, pad)).transpose(1, 2).unsqueeze(1)  # [B, 1, T', F]
        pha = F.pad(noisy_pha, (0, pad)).transpose(1, 2).unsqueeze(1)
        mag_feat, pha_feat = self.unet(self.encoder(torch.cat((mag, pha), dim=1)))
        out_mag = (mag * self.mask_decoder(mag_feat))[:, 0].transpose(1, 2)[..., :t]
        out_pha = self.phase_decoder(pha_feat)[:, 0].transpose(1, 2)[..., :t]
        return self.polar(out_mag, out_pha)

    def macs(self, n_frames: int) -> dict[str, int]:
        """MACs of one forward pass on ``n_frames`` frames (batch 1), counted by tracing it (cost.traced_macs):
        every conv, plus the attention products and the deformable sampling."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        x = torch.zeros(1, self.n_bins, n_frames)
        parts = {"encoder": self.encoder, "unet": self.unet, "mask_decoder": self.mask_decoder,
                 "phase_decoder": self.phase_decoder}
        return traced_macs(self, lambda: self(x, x), parts)
