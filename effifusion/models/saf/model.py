"""Spectrum Attention Fusion (SAF, Long et al., arXiv 2308.02263), rebuilt from what is known of it.

No official code exists and only the abstract and a seed summary were available (docs/models.md,
SAF), so this is a "SAF-like" model: the parts named by the paper are there, every number and most
of the wiring are inferred and exposed as ``model:`` settings (see ``SAF``'s docstring for which is
which). Shapes: the forward pass takes the compressed magnitude and the phase [B, F, T] of the
StftFrontEnd and works on [B, C, T, F] feature maps (F' = (F - 3) // 2 + 1 after the encoders).

Every op is plain convolution, element-wise arithmetic, padding, slicing and a softmax over a
small fixed axis, so the model exports to ONNX with dynamic batch and length and needs no full
attention (and so no models/attention.py scan). Every convolution's module name contains "conv"
(pruning regexes such as ``"conv"`` select all of them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from effifusion.dsp.stft import StftFrontEnd
from effifusion.models import onnx_forms
from effifusion.models.base import MagnitudePhaseModel
from effifusion.models.cost import conv_chain_macs
from effifusion.models.saf.config import SafConfig

ARCH = "saf"


def paper_config() -> dict[str, Any]:
    """The paper-size model (presets/saf.yaml): 0.58 M parameters [ABS], every width and depth [INF]."""
    return {
        "arch": ARCH, "n_fft": 400, "hop_length": 100, "win_length": 400, "compress_factor": 0.3,
        "phase_input": "cos_sin", "channels": 64, "encoder_depth": 2, "num_saf_blocks": 4, "num_heads": 4,
        "attn_kernel": 11, "local_bands": 3, "ffn_mult": 2, "tcn_layers": 4, "tcn_repeats": 4,
        "tcn_hidden": 132, "tcn_kernel": 3, "decoder_depth": 2, "beta": 2.0,
    }


def demo_config() -> dict[str, Any]:
    """The demo-size model (presets/saf-demo.yaml): trains in minutes on a CPU."""
    return {**paper_config(), "channels": 32, "num_saf_blocks": 2, "num_heads": 2, "tcn_layers": 4,
            "tcn_repeats": 1, "tcn_hidden": 64}


# ---------------------------------------------------------------------------------------------
# Building blocks


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of [B, C, T, F] at each (t, f): no statistic over time, so any T >= 1."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - onnx_forms.channel_mean(x)
        var = onnx_forms.channel_mean(centred.pow(2))
        return centred * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class SeparableConv(nn.Module):
    """Depthwise 3×3 → pointwise 1×1 → ChannelNorm → PReLU, with a residual ([B, C, T, F], same size)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise_conv = nn.Conv2d(channels, channels, 1)
        self.norm = ChannelNorm(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.pointwise_conv(self.depthwise_conv(x))))


class SpectrumEncoder(nn.Module):
    """[B, in, T, F] → [B, C, T, F]: 1×1 conv + norm + PReLU, then ``depth`` depthwise-separable layers."""

    def __init__(self, in_channels: int, channels: int, depth: int):
        super().__init__()
        self.input_conv = nn.Conv2d(in_channels, channels, 1)
        self.input_norm = ChannelNorm(channels)
        self.input_act = nn.PReLU(channels)
        self.layers = nn.Sequential(*(SeparableConv(channels) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.input_act(self.input_norm(self.input_conv(x))))


class Fusion(nn.Module):
    """The two encoders' maps concatenated → 1×1 conv 2C → C → (1,3) conv with frequency stride 2 (F → F')."""

    def __init__(self, channels: int):
        super().__init__()
        self.fuse_conv = nn.Conv2d(2 * channels, channels, 1)
        self.fuse_norm = ChannelNorm(channels)
        self.fuse_act = nn.PReLU(channels)
        self.downsample_conv = nn.Conv2d(channels, channels, (1, 3), (1, 2))
        self.downsample_norm = ChannelNorm(channels)
        self.downsample_act = nn.PReLU(channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = self.fuse_act(self.fuse_norm(self.fuse_conv(torch.cat((a, b), dim=1))))
        return self.downsample_act(self.downsample_norm(self.downsample_conv(x)))


class ConvAttention(nn.Module):
    """Convolutional attention (Conv2Former's ConvMod), multi-head by channel groups.

    LN → A = GELU(1×1) → depthwise k×k; V = 1×1; out = 1×1 proj(A ⊙ V). The A and V 1×1 convs are
    grouped by head (each head mixes only its own channels, as heads of multi-head attention do)
    and the projection mixes the heads; num_heads = 1 is ConvMod exactly.
    """

    def __init__(self, channels: int, num_heads: int, kernel: int):
        super().__init__()
        self.norm = ChannelNorm(channels)
        self.attn_conv = nn.Conv2d(channels, channels, 1, groups=num_heads)
        self.act = nn.GELU()
        self.attn_dw_conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.value_conv = nn.Conv2d(channels, channels, 1, groups=num_heads)
        self.proj_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        a = self.attn_dw_conv(self.act(self.attn_conv(x)))
        return self.proj_conv(a * self.value_conv(x))


class LocalFrequencyAttention(nn.Module):
    """Multi-head attention of each frequency bin over its ``bands`` nearest bins (itself and ±bands//2).

    q, k, v from one 1×1 conv; for each offset d the score of bin f is q(f)·k(f + d) / √head_dim
    (keys shifted by zero-padded slicing), offsets outside the spectrum get a -1e4 score (a zero
    weight after the softmax), the softmax runs over the ``bands`` offsets and the output is the
    weighted sum of the shifted values, projected by a 1×1 conv. This is the band-masked
    self-attention along frequency of LSA with |i - j| <= bands // 2, computed without the F × F
    score matrix: O(bands) per bin, and only Pad / Slice / Mul / ReduceSum / Softmax in ONNX.
    """

    def __init__(self, channels: int, num_heads: int, bands: int):
        super().__init__()
        self.num_heads = num_heads
        self.half = bands // 2
        self.norm = ChannelNorm(channels)
        self.qkv_conv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_conv = nn.Conv2d(channels, channels, 1)

    def _shifted(self, x: torch.Tensor, d: int) -> torch.Tensor:
        """x[..., f + d] with zeros outside [0, F): x is [..., F]."""
        if d == 0:
            return x
        f = x.shape[-1]
        padded = nn.functional.pad(x, (self.half, self.half))
        return padded.narrow(-1, self.half + d, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        h = self.num_heads
        q, k, v = self.qkv_conv(self.norm(x)).reshape(b, 3, h, c // h, t, f).unbind(1)  # [B, h, dh, T, F]
        q = q * (c // h) ** -0.5
        inside = torch.ones_like(x[:1, :1, :1, :])  # [1, 1, 1, F]: ones, shifted to mark the real bins
        offsets = range(-self.half, self.half + 1)
        scores = torch.stack([(q * self._shifted(k, d)).sum(2) + (self._shifted(inside, d) - 1.0) * 1e4
                              for d in offsets], dim=2)  # [B, h, bands, T, F]
        weights = torch.softmax(scores, dim=2)
        out = sum(weights[:, :, i, None] * self._shifted(v, d) for i, d in enumerate(offsets))
        return self.proj_conv(out.reshape(b, c, t, f))


class ConvFeedForward(nn.Module):
    """LN → 1×1 C → mult·C → GELU → depthwise 3×3 → 1×1 back to C (the feed-forward half of the block)."""

    def __init__(self, channels: int, mult: int):
        super().__init__()
        hidden = channels * mult
        self.norm = ChannelNorm(channels)
        self.in_conv = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.out_conv = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.dw_conv(self.act(self.in_conv(self.norm(x)))))


class SAFBlock(nn.Module):
    """Spectrum Attention Fusion block: x += ConvAttention(x); x += LocalFrequencyAttention(x); x += FFN(x)."""

    def __init__(self, channels: int, num_heads: int, kernel: int, bands: int, ffn_mult: int):
        super().__init__()
        self.conv_attention = ConvAttention(channels, num_heads, kernel)
        self.local_attention = LocalFrequencyAttention(channels, num_heads, bands)
        self.ffn = ConvFeedForward(channels, ffn_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.conv_attention(x)
        x = x + self.local_attention(x)
        return x + self.ffn(x)


class TCNBlock(nn.Module):
    """Conv-TasNet block along time, run on every frequency bin with shared weights ([B, C, T, F']).

    1×1 C → H, PReLU, norm, depthwise (k, 1) conv dilated d along time, PReLU, norm, 1×1 H → C,
    residual. The norm is per (t, f) over channels (cLN), so the block works at any T >= 1.
    """

    def __init__(self, channels: int, hidden: int, kernel: int, dilation: int):
        super().__init__()
        self.in_conv = nn.Conv2d(channels, hidden, 1)
        self.in_act = nn.PReLU(hidden)
        self.in_norm = ChannelNorm(hidden)
        self.dw_conv = nn.Conv2d(hidden, hidden, (kernel, 1), padding=(dilation * (kernel - 1) // 2, 0),
                                 dilation=(dilation, 1), groups=hidden)
        self.dw_act = nn.PReLU(hidden)
        self.dw_norm = ChannelNorm(hidden)
        self.out_conv = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.in_norm(self.in_act(self.in_conv(x)))
        y = self.dw_norm(self.dw_act(self.dw_conv(y)))
        return x + self.out_conv(y)


class Decoder(nn.Module):
    """[B, C, T, F'] → [B, out, T, F]: ``depth`` separable layers, (1,3)/(1,2) transposed conv, norm, PReLU, 1×1."""

    def __init__(self, channels: int, depth: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(*(SeparableConv(channels) for _ in range(depth)))
        self.upsample_conv = nn.ConvTranspose2d(channels, channels, (1, 3), (1, 2))
        self.upsample_norm = ChannelNorm(channels)
        self.upsample_act = nn.PReLU(channels)
        self.out_conv = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample_act(self.upsample_norm(self.upsample_conv(self.layers(x))))
        return self.out_conv(x)


# ---------------------------------------------------------------------------------------------
# The model


class SAF(MagnitudePhaseModel):
    """SAF-like enhancer. forward: (mag, pha) [B, F, T] → (mag, pha [B, F, T], com [B, F, T, 2]).

    Known (docs/models.md, SAF):
    - [ABS] a convolutional "Spectrum Attention Fusion" module replaces self-attention layers of a
      speech Transformer; 0.58 M parameters; VoiceBank+DEMAND.
    - [SEED] two spectrum encoders, magnitude/phase and real/imaginary, both with depthwise-separable
      convolutions; convolutional attention = Hadamard product of a large-kernel conv output with
      multi-head values; local attention over 3 neighbouring frequency bands; TCN blocks; a mask
      decoder and a bias decoder; Adam, lr 5e-4, betas (0.95, 0.999), 50 epochs.

    Inferred [INF] (each a ``model:`` setting where it is a number or a choice):
    - front end: EffiFusion's STFT (n_fft 400, hop 100, Hann 400) and magnitude compression 0.3;
    - ``phase_input``: the magnitude/phase encoder reads (|Y|^c, cos φ, sin φ) ("cos_sin", no
      wrapping discontinuity) or (|Y|^c, φ) ("raw"); the real/imaginary encoder reads the
      compressed complex spectrum |Y|^c (cos φ, sin φ);
    - ``channels``, ``encoder_depth`` (depthwise 3×3 + pointwise layers per encoder, residual);
      the fusion is concatenation + 1×1 conv, then a stride-2 (1,3) conv halves frequency (F → F',
      as MP-SENet / EffiFusion do); norms are channel LayerNorms (per time-frequency point);
    - the SAF block = ConvMod (Conv2Former) + local frequency attention + a conv feed-forward, each
      pre-norm with a residual: ``num_saf_blocks``, ``num_heads`` (channel groups), ``attn_kernel``
      (11, ConvMod's), ``local_bands`` (3 [SEED]: the bin and ±1), ``ffn_mult``;
    - TCN: Conv-TasNet blocks along time applied per frequency bin with shared weights (not C×F
      folded, whose 1×1 convs alone would exceed the 0.58 M budget): ``tcn_layers`` per repeat with
      dilations 1, 2, 4, ..., ``tcn_repeats``, ``tcn_hidden``, ``tcn_kernel``; after the SAF blocks;
    - decoders: ``decoder_depth`` separable layers, transposed conv back to F, 1×1 out. Mask decoder:
      magnitude mask M in (0, ``beta``) through a learnable per-frequency sigmoid (EffiFusion's);
      bias decoder: complex residual B. Estimate S = M·Y + B on the compressed complex spectrum Y;
      mag = |S|, pha = atan2(S), com = mag·(cos pha, sin pha);
    - every width and depth: chosen to give 0.58 M parameters at the paper size.
    """

    arch = ARCH
    objectives = ("predictive", "metric_gan")  # the paper trains it with a predictive loss, no discriminator

    Config = SafConfig

    def __init__(self, cfg: SafConfig, sample_rate: int):
        super().__init__(cfg, sample_rate)
        self.frontend = StftFrontEnd.from_config(cfg)
        self.n_bins = self.frontend.n_bins
        self.phase_input, self.beta = cfg.phase_input, cfg.beta
        channels, encoder_depth, decoder_depth = cfg.channels, cfg.encoder_depth, cfg.decoder_depth
        num_heads, attn_kernel, local_bands = cfg.num_heads, cfg.attn_kernel, cfg.local_bands
        self.mag_pha_encoder = SpectrumEncoder(3 if cfg.phase_input == "cos_sin" else 2, channels, encoder_depth)
        self.complex_encoder = SpectrumEncoder(2, channels, encoder_depth)
        self.fusion = Fusion(channels)
        self.saf_blocks = nn.ModuleList(
            SAFBlock(channels, num_heads, attn_kernel, local_bands, cfg.ffn_mult) for _ in range(cfg.num_saf_blocks)
        )
        self.tcn_blocks = nn.ModuleList(
            TCNBlock(channels, cfg.tcn_hidden, cfg.tcn_kernel, 2 ** i) for _ in range(cfg.tcn_repeats)
            for i in range(cfg.tcn_layers)
        )
        self.mask_decoder = Decoder(channels, decoder_depth, 1)
        self.mask_slope = nn.Parameter(torch.ones(self.n_bins))  # learnable sigmoid, one slope per bin
        self.bias_decoder = Decoder(channels, decoder_depth, 2)

    def forward(self, noisy_mag: torch.Tensor, noisy_pha: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_bins(noisy_mag)
        mag = noisy_mag.transpose(1, 2).unsqueeze(1)  # [B, 1, T, F]
        pha = noisy_pha.transpose(1, 2).unsqueeze(1)
        cos, sin = torch.cos(pha), torch.sin(pha)
        real, imag = mag * cos, mag * sin
        mp_in = torch.cat((mag, cos, sin) if self.phase_input == "cos_sin" else (mag, pha), dim=1)
        x = self.fusion(self.mag_pha_encoder(mp_in), self.complex_encoder(torch.cat((real, imag), dim=1)))
        for block in self.saf_blocks:
            x = block(x)
        for block in self.tcn_blocks:
            x = block(x)
        mask = self.beta * torch.sigmoid(self.mask_slope * self.mask_decoder(x))  # [B, 1, T, F] in (0, β)
        bias = self.bias_decoder(x)  # [B, 2, T, F]
        est_re = (mask * real + bias[:, :1])[:, 0].transpose(1, 2)  # [B, F, T]
        est_im = (mask * imag + bias[:, 1:])[:, 0].transpose(1, 2)
        out_mag = torch.sqrt(est_re.pow(2) + est_im.pow(2) + 1e-9)
        out_pha = torch.atan2(est_im + 1e-10, est_re + 1e-5)  # the front end's offsets: finite gradients
        return self.polar(out_mag, out_pha)

    def macs(self, n_frames: int) -> dict[str, int]:
        """Analytic MACs of one forward pass on ``n_frames`` STFT frames (batch 1), per component.

        Keys: encoders, fusion, saf_blocks, tcn_blocks, mask_decoder, bias_decoder, total; and, already
        inside saf_blocks, local_attention_matmuls (the bands scores and weighted sums per bin).
        Element-wise products (A ⊙ V, masks) are not counted, as usual (models/cost.py).
        """
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        t, f = n_frames, self.n_bins
        enc = conv_chain_macs(self.mag_pha_encoder, (t, f))[0] + conv_chain_macs(self.complex_encoder, (t, f))[0]
        fusion, (_, f_enc) = conv_chain_macs(self.fusion, (t, f))
        channels = self.cfg.channels
        local = 2 * self.cfg.local_bands * channels * t * f_enc * len(self.saf_blocks)  # q·k and w·v
        saf = conv_chain_macs(self.saf_blocks, (t, f_enc))[0] + local
        tcn, _ = conv_chain_macs(self.tcn_blocks, (t, f_enc))
        mask, _ = conv_chain_macs(self.mask_decoder, (t, f_enc))
        bias, _ = conv_chain_macs(self.bias_decoder, (t, f_enc))
        return {
            "encoders": enc, "fusion": fusion, "saf_blocks": saf, "tcn_blocks": tcn, "mask_decoder": mask,
            "bias_decoder": bias, "total": enc + fusion + saf + tcn + mask + bias, "local_attention_matmuls": local,
        }
