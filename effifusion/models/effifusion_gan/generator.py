"""EffiFusion-GAN generator: MP-SENet (short) with depthwise-separable dense blocks and dual-norm attention.

Layout follows MP-SENet (docs/reference.md §1): the forward pass takes the compressed magnitude and the
phase as [B, F, T], stacks them to [B, 2, T, F], encodes to [B, C, T, F'] with F' = (F - 3) // 2 + 1,
runs TS-Conformer blocks (time, then frequency) and decodes a magnitude mask and a phase in parallel.

Every convolution module's name contains "conv" so pruning regexes such as ``"conv"`` select all of
them; ``conv_modules`` lists them with their qualified names.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from effifusion.dsp.stft import StftFrontEnd
from effifusion.models import onnx_forms
from effifusion.models.attention import head_dims, self_attention
from effifusion.models.base import MagnitudePhaseModel
from effifusion.models.blocks import DenseBlock, DenseLayer, LearnableSigmoid2d  # noqa: F401 (DenseLayer: re-exported)
from effifusion.models.cost import conformer_macs, conv_chain_macs
from effifusion.models.effifusion_gan.config import ENCODER_ONLY, EffiFusionGanConfig

ARCH = "effifusion_gan"


def paper_config() -> dict[str, Any]:
    """The paper's generator: C = 64, 4 dense layers, 4 TS-Conformer blocks, 4 heads (presets/paper.yaml)."""
    return {
        "arch": ARCH, "n_fft": 400, "hop_length": 100, "win_length": 400, "compress_factor": 0.3,
        "channels": 64, "dense_depth": 4, "num_tsblocks": 4, "num_heads": 4, "ffn_mult": 4,
        "conv_kernel": 31, "attn_dropout": 0.2, "ffn_dropout": 0.2, "depthwise_separable": True,
        "residual_dual_norm": True, "beta": 2.0,
    }


# ---------------------------------------------------------------------------------------------
# Encoder and decoders (their dense blocks: models/blocks.py)


class DenseEncoder(nn.Module):
    """[B, 2, T, F] → [B, C, T, F'] (1×1 conv, dense block, (1,3)/(1,2) conv halving frequency)."""

    def __init__(self, channels: int, depth: int, depthwise_separable: bool):
        super().__init__()
        self.input_conv = nn.Conv2d(2, channels, (1, 1))
        self.input_norm = nn.InstanceNorm2d(channels, affine=True)
        self.input_act = nn.PReLU(channels)
        self.dense_block = DenseBlock(channels, depth, depthwise_separable)
        self.downsample_conv = nn.Conv2d(channels, channels, (1, 3), (1, 2))
        self.downsample_norm = nn.InstanceNorm2d(channels, affine=True)
        self.downsample_act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_act(self.input_norm(self.input_conv(x)))
        x = self.dense_block(x)
        return self.downsample_act(self.downsample_norm(self.downsample_conv(x)))


class MaskDecoder(nn.Module):
    """[B, C, T, F'] → magnitude mask [B, 1, T, F] in (0, β)."""

    def __init__(self, channels: int, depth: int, depthwise_separable: bool, n_bins: int, beta: float):
        super().__init__()
        self.dense_block = DenseBlock(channels, depth, depthwise_separable)
        self.upsample_conv = nn.ConvTranspose2d(channels, channels, (1, 3), (1, 2))
        self.mask_conv = nn.Conv2d(channels, 1, (1, 1))
        self.mask_norm = nn.InstanceNorm2d(1, affine=True)
        self.mask_act = nn.PReLU(1)
        self.mask_out_conv = nn.Conv2d(1, 1, (1, 1))
        self.lsigmoid = LearnableSigmoid2d(n_bins, beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample_conv(self.dense_block(x))
        x = self.mask_out_conv(self.mask_act(self.mask_norm(self.mask_conv(x))))  # [B, 1, T, F]
        x = self.lsigmoid(x[:, 0].transpose(1, 2))  # [B, F, T]
        return x.transpose(1, 2).unsqueeze(1)


class PhaseDecoder(nn.Module):
    """[B, C, T, F'] → phase [B, 1, T, F] = atan2(pseudo-imaginary, pseudo-real)."""

    def __init__(self, channels: int, depth: int, depthwise_separable: bool):
        super().__init__()
        self.dense_block = DenseBlock(channels, depth, depthwise_separable)
        self.upsample_conv = nn.ConvTranspose2d(channels, channels, (1, 3), (1, 2))
        self.upsample_norm = nn.InstanceNorm2d(channels, affine=True)
        self.upsample_act = nn.PReLU(channels)
        self.real_conv = nn.Conv2d(channels, 1, (1, 1))
        self.imag_conv = nn.Conv2d(channels, 1, (1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample_act(self.upsample_norm(self.upsample_conv(self.dense_block(x))))
        return torch.atan2(self.imag_conv(x), self.real_conv(x))


# ---------------------------------------------------------------------------------------------
# Conformer and TS-Conformer


class FeedForward(nn.Module):
    """LN → Linear C→mult·C → SiLU → dropout → Linear → dropout (used as the two ½-FFNs)."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(dim * mult, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``scale · net(x)``; on [tokens, C], so the linear layers are plain matrix products with their bias
        (ONNX Gemm). In export a power-of-two ``scale`` (the conformer's ½) goes into the last layer's weights
        and bias, which gives the same numbers bit for bit and saves a pass over the output."""
        h = x.reshape(-1, x.shape[-1])
        if onnx_forms.active() and not self.training and math.frexp(scale)[0] == 0.5:
            last = self.net[4]
            h = self.net[3](self.net[2](self.net[1](self.net[0](h))))
            return nn.functional.linear(h, last.weight * scale, last.bias * scale).reshape(x.shape)
        y = self.net(h).reshape(x.shape)
        return y if scale == 1.0 else scale * y


class AttentionModule(nn.Module):
    """Self-attention over the sequence axis of [N, L, C]; returns the update the conformer adds to x.

    dual_norm=True (EffiFusion): LN2(MHA(LN1(x))), the "dual normalization" with the residual around
    both norms; dual_norm=False (MP-SENet): MHA(LN(x)).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, dual_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.post_norm = nn.LayerNorm(dim) if dual_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self_attention(self.norm(x), self.attn)  # = self.attn(x, x, x) in memory linear in length
        return self.post_norm(x) if self.post_norm is not None else x


class ConvModule(nn.Module):
    """Conformer convolution module on [N, L, C]: LN, 1×1 C→4C, GLU, depthwise k, BN, SiLU, 1×1 2C→C."""

    def __init__(self, dim: int, kernel_size: int, dropout: float):
        super().__init__()
        inner = 2 * dim
        self.norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * inner, 1)
        self.glu = nn.GLU(dim=1)
        self.depthwise_conv = nn.Conv1d(inner, inner, kernel_size, padding=kernel_size // 2, groups=inner)
        self.batch_norm = nn.BatchNorm1d(inner)
        self.act = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(inner, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onnx_forms.active() and not self.training:
            return self._export_forward(x)
        x = self.norm(x).transpose(1, 2)
        x = self.glu(self.pointwise_conv1(x))
        x = self.act(self.batch_norm(self.depthwise_conv(x)))
        return self.dropout(self.pointwise_conv2(x).transpose(1, 2))

    def _export_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function in the operators ONNX Runtime runs fastest (models/onnx_forms.py): the GLU's two
        halves as two 1×1 convs (no Split; the gate's sigmoid fuses into its conv), the depthwise conv as a
        (k, 1) 2-D conv over [N, C, L, 1] followed by its batch norm (ONNX Runtime folds the norm into it)."""
        x = self.norm(x).transpose(1, 2)
        pw, dw = self.pointwise_conv1, self.depthwise_conv
        half = pw.out_channels // 2
        a = nn.functional.conv1d(x, pw.weight[:half], pw.bias[:half])
        gate = torch.sigmoid(nn.functional.conv1d(x, pw.weight[half:], pw.bias[half:]))
        y = nn.functional.conv2d((a * gate).unsqueeze(-1), dw.weight.unsqueeze(-1), dw.bias,
                                 padding=(dw.padding[0], 0), groups=dw.groups)
        bn = self.batch_norm
        y = nn.functional.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        y = self.act(y.squeeze(-1))
        return self.pointwise_conv2(y).transpose(1, 2)


class ConformerBlock(nn.Module):
    """½FFN + self-attention + conv module + ½FFN + final LN, each with a residual, on [N, L, C]."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: int, conv_kernel: int, attn_dropout: float,
                 ffn_dropout: float, dual_norm: bool):
        super().__init__()
        self.ffn1 = FeedForward(dim, ffn_mult, ffn_dropout)
        self.attention = AttentionModule(dim, num_heads, attn_dropout, dual_norm)
        self.conv_module = ConvModule(dim, conv_kernel, 0.0)
        self.ffn2 = FeedForward(dim, ffn_mult, ffn_dropout)
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ffn1(x, 0.5)
        x = x + self.attention(x)
        x = x + self.conv_module(x)
        x = x + self.ffn2(x, 0.5)
        return self.final_norm(x)


class TSConformerBlock(nn.Module):
    """Conformer over time on [(B·F'), T, C], then over frequency on [(B·T), F', C], outer residuals."""

    def __init__(self, dim: int, **conformer_kw: Any):
        super().__init__()
        self.time_conformer = ConformerBlock(dim, **conformer_kw)
        self.freq_conformer = ConformerBlock(dim, **conformer_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        x = x.permute(0, 3, 2, 1).reshape(b * f, t, c)
        x = self.time_conformer(x) + x
        x = x.reshape(b, f, t, c).transpose(1, 2).reshape(b * t, f, c)
        x = self.freq_conformer(x) + x
        return x.reshape(b, t, f, c).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Generator


class Generator(MagnitudePhaseModel):
    """EffiFusion-GAN generator. forward: (mag, pha) [B, F, T] → (mag, pha [B, F, T], com [B, F, T, 2])."""

    arch = ARCH

    Config = EffiFusionGanConfig

    def __init__(self, cfg: EffiFusionGanConfig, sample_rate: int):
        super().__init__(cfg, sample_rate)
        self.frontend = StftFrontEnd.from_config(cfg)
        self.n_bins = self.frontend.n_bins
        channels, dense_depth, depthwise_separable = cfg.channels, cfg.dense_depth, cfg.depthwise_separable
        # "encoder": depthwise-separable convolutions in the encoder's dense block only, the decoders keep
        # MP-SENet's standard ones (the reading of the paper with 1.75 M parameters before pruning,
        # docs/presets.md)
        decoder_dws = depthwise_separable is True
        self.encoder = DenseEncoder(channels, dense_depth, depthwise_separable in (True, ENCODER_ONLY))
        self.tsblocks = nn.ModuleList(
            TSConformerBlock(channels, num_heads=cfg.num_heads, ffn_mult=cfg.ffn_mult, conv_kernel=cfg.conv_kernel,
                             attn_dropout=cfg.attn_dropout, ffn_dropout=cfg.ffn_dropout,
                             dual_norm=cfg.residual_dual_norm)
            for _ in range(cfg.num_tsblocks)
        )
        self.mag_decoder = MaskDecoder(channels, dense_depth, decoder_dws, self.n_bins, cfg.beta)
        self.phase_decoder = PhaseDecoder(channels, dense_depth, decoder_dws)

    def forward(self, noisy_mag: torch.Tensor, noisy_pha: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_bins(noisy_mag)
        mag = noisy_mag.transpose(1, 2).unsqueeze(1)  # [B, 1, T, F]
        pha = noisy_pha.transpose(1, 2).unsqueeze(1)
        x = self.encoder(torch.cat((mag, pha), dim=1))
        for block in self.tsblocks:
            x = block(x)
        out_mag = (mag * self.mag_decoder(x))[:, 0].transpose(1, 2)  # [B, F, T]
        out_pha = self.phase_decoder(x)[:, 0].transpose(1, 2)
        return self.polar(out_mag, out_pha)

    def macs(self, n_frames: int) -> dict[str, int]:
        """Analytic MACs of one forward pass on ``n_frames`` STFT frames (batch 1), per component.

        Keys: encoder, tsblocks, mag_decoder, phase_decoder, total; and, already inside tsblocks,
        attention_matmuls (QKᵀ + AV, the part quadratic in length) and attention (matmuls + projections).
        """
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        t, f = n_frames, self.n_bins
        encoder, (_, f_enc) = conv_chain_macs(self.encoder, (t, f))
        ts_total = attention_matmuls = attention = 0
        for block in self.tsblocks:
            time_part = _conformer_macs(block.time_conformer, f_enc, t)  # F' sequences of T frames
            freq_part = _conformer_macs(block.freq_conformer, t, f_enc)  # T sequences of F' bins
            for part in (time_part, freq_part):
                ts_total += sum(part.values())
                attention_matmuls += part["attention_matmuls"]
                attention += part["attention_matmuls"] + part["attention_projections"]
        mag, _ = conv_chain_macs(self.mag_decoder, (t, f_enc))
        pha, _ = conv_chain_macs(self.phase_decoder, (t, f_enc))
        return {
            "encoder": encoder, "tsblocks": ts_total, "mag_decoder": mag, "phase_decoder": pha,
            "total": encoder + ts_total + mag + pha,
            "attention_matmuls": attention_matmuls, "attention": attention,
        }


def _conformer_macs(block: ConformerBlock, n_seq: int, length: int) -> dict[str, int]:
    """MACs of one conformer applied to ``n_seq`` sequences of ``length`` tokens."""
    linear = [m for ffn in (block.ffn1, block.ffn2) for m in ffn.modules() if isinstance(m, nn.Linear)]
    attn = block.attention.attn
    d_qk, d_v = head_dims(attn)  # narrower than embed_dim / heads after channel pruning of the attention
    return conformer_macs(linear, attn.embed_dim, block.conv_module, n_seq, length,
                          qk_width=attn.num_heads * d_qk, v_width=attn.num_heads * d_v)
