"""Building blocks shared by the magnitude-phase models (EffiFusion-GAN, MUSE, IMSE).

MP-SENet's dilated dense block (EffiFusion-GAN's with depthwise-separable convolutions, MUSE's and
IMSE's with standard ones) and the learnable sigmoid of its mask decoder. An architecture's own
modules live in its package (models/<arch>/); what two architectures use lives here.
"""

from __future__ import annotations

import torch
from torch import nn


def _weight(conv: nn.Conv2d) -> torch.Tensor:
    """The conv's weight as the pruning hook would make it (weight_orig * weight_mask) when pruned:
    read outside the module's own call, ``conv.weight`` may be the previous step's."""
    return conv.weight_orig * conv.weight_mask if hasattr(conv, "weight_orig") else conv.weight


class DenseLayer(nn.Module):
    """One dense-block layer: conv (standard or depthwise-separable) → InstanceNorm → PReLU."""

    def __init__(self, in_channels: int, channels: int, dilation: int, depthwise_separable: bool):
        super().__init__()
        kernel = (3, 3)
        padding = (dilation, 1)  # "same" for kernel 3 with dilation (d, 1) along time
        self.depthwise_separable = depthwise_separable
        self.dilation = dilation
        if depthwise_separable:
            # dilation is applied by interleaving frames in _depthwise, so the module is undilated
            self.depthwise_conv = nn.Conv2d(in_channels, in_channels, kernel, padding=(1, 1), groups=in_channels)
            self.pointwise_conv = nn.Conv2d(in_channels, channels, (1, 1))
        else:
            self.conv = nn.Conv2d(in_channels, channels, kernel, dilation=(dilation, 1), padding=padding)
        self.norm = nn.InstanceNorm2d(channels, affine=True)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.depthwise_separable:
            x = self.pointwise_conv(self._depthwise(x))
        else:
            x = self.conv(x)
        return self.act(self.norm(x))

    def forward_parts(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``forward(torch.cat(parts, dim=1))`` for the depthwise-separable layer, part by part."""
        dw, pw = self.depthwise_conv, self.pointwise_conv
        dw_w, pw_w = _weight(dw), _weight(pw)
        out, start = None, 0
        for part in parts:
            stop = start + part.shape[1]
            y = self._depthwise_with(part, dw_w[start:stop], dw.bias[start:stop])
            y = nn.functional.conv2d(y, pw_w[:, start:stop])
            out = y if out is None else out + y
            start = stop
        out = out + pw.bias[:, None, None]
        return self.act(self.norm(out))

    def _depthwise_with(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The dilated depthwise conv (dilation d along time) with the given weight (or a slice of it)."""
        d = self.dilation
        return nn.functional.conv2d(x, weight, bias, padding=(d, 1), dilation=(d, 1), groups=x.shape[1])

    def _depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise 3×3 conv dilated by d along time, as an undilated conv over interleaved frames.

        Frames t = q·d + r of each phase r form a sequence on which the dilated kernel is an
        ordinary one, so folding r into the batch gives the dilated result exactly (T is zero-padded
        to a multiple of d, as the conv's own padding would). Why: PyTorch's CPU backward of dilated
        depthwise convolutions takes a slow generic path (7x slower at dilation 8 than at 1,
        measured), and calling the module itself keeps its forward hooks (pruning masks) working.
        On CUDA and while a graph is captured (torch.compile, ONNX export) the direct dilated conv
        is used instead.
        """
        d = self.dilation
        conv = self.depthwise_conv
        if d == 1:
            return conv(x)
        if x.is_cuda or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            # cuDNN handles dilation natively; graph capture wants static shapes, not the reshape.
            return self._depthwise_with(x, _weight(conv), conv.bias)
        b, c, t, f = x.shape
        q = (t + d - 1) // d
        x = nn.functional.pad(x, (0, 0, 0, q * d - t))
        x = x.reshape(b, c, q, d, f).permute(0, 3, 1, 2, 4).reshape(b * d, c, q, f)
        y = self.depthwise_conv(x)
        y = y.reshape(b, d, c, q, f).permute(0, 2, 3, 1, 4).reshape(b, c, q * d, f)
        return y[:, :, :t]


class DenseBlock(nn.Module):
    """Dilated DenseNet block: layer i (dilation 2**i along time) sees all previous outputs concatenated."""

    def __init__(self, channels: int, depth: int, depthwise_separable: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(channels * (i + 1), channels, 2 ** i, depthwise_separable) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and all(layer.depthwise_separable for layer in self.layers):
            return self._forward_by_parts(x)
        skip = x
        for layer in self.layers:
            x = layer(skip)
            skip = torch.cat([x, skip], dim=1)
        return x

    def _forward_by_parts(self, x: torch.Tensor) -> torch.Tensor:
        """The same block without concatenating: inference memory of a few C-channel maps.

        A depthwise conv acts on each channel alone and a pointwise conv is linear in its input
        channels, so layer i's conv over cat([x_i, ..., x_0]) is the sum over parts j of
        pointwise_j(depthwise_j(x_j)), with the weights sliced by channel. For the paper model at
        10 s the concatenated input of the last encoder layer alone is 316 MiB (256 channels at
        F = 201) and its depthwise output as much again; by parts, one 64-channel map is in flight.
        Same result to float rounding (summation order); training keeps the concatenating form.
        """
        parts = [x]  # newest first, the channel order of the concatenation
        for layer in self.layers:
            parts.insert(0, layer.forward_parts(parts))
        return parts[0]


class LearnableSigmoid2d(nn.Module):
    """β · sigmoid(slope_f · x) with one learnable slope per frequency bin; x is [B, F, T]."""

    def __init__(self, n_bins: int, beta: float):
        super().__init__()
        self.beta = float(beta)
        self.slope = nn.Parameter(torch.ones(n_bins, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.sigmoid(self.slope * x)
