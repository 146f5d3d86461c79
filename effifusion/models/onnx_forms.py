"""Forms of some layers that ONNX Runtime runs faster, used while a model is exported to ONNX.

Same function, same weights and state_dict keys; only the operators the exporter writes change (each
measured in ONNX Runtime 1.31 on one thread, paper-size tensors at 2 s):

- ``nn.PReLU`` whose slopes all lie in [0, 1] becomes ``max(x, slope·x)`` (Mul + Max, 3.4x faster than
  ONNX Runtime's broadcasting PRelu kernel). For such slopes it is the same number bit for bit: for
  x ≥ 0, slope·x ≤ x; for x < 0, slope·x ≥ x, and slope·x is the product PReLU itself computes. A layer
  with a slope outside [0, 1] (possible after training) keeps the PRelu operator.
- The conformer's depthwise convolution runs as a 2-D convolution over [N, C, L, 1] with a (k, 1)
  kernel, which ONNX Runtime runs with its blocked-channel (NCHWc) depthwise kernel instead of its
  generic grouped 1-D path (about 1.6x faster; generator.ConvModule).
- A mean over the channels of [B, C, H, W] (SAF's ChannelNorm) becomes a 1×1
  convolution with weights 1/C (``channel_mean``): ONNX Runtime runs it as a GEMM, 1.9x faster than its
  ReduceMean over a middle axis at [1, 64, 201, 101]; the same number up to float rounding (the order of
  the sum).
- A split of the channels (``split_channels``: ``chunk``/``split`` along dim 1 in IMSE and MUSE) becomes
  slices: the exporter writes ``split`` as SplitToSequence + SequenceAt, which copy twice and took 11 % of
  IMSE's time; slices copy once (1.5x faster on [1, 256, 201, 101]; bit-exact, no arithmetic).

``export_forms()`` turns them on; ``inference/export.py`` enters it with ``fused_attention()``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_ACTIVE = False


def active() -> bool:
    """Whether the export forms are on (inside ``export_forms()``)."""
    return _ACTIVE


def slopes_in_unit_range(module: nn.PReLU) -> bool:
    w = module.weight.detach()
    return bool(((w >= 0) & (w <= 1)).all())


def prelu_as_max(module: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` as max(x, slope·x) when every slope is in [0, 1] (exact there), else PReLU itself.
    Which one was decided when ``export_forms`` was entered (the exporter cannot branch on weights)."""
    w = module.weight
    if not getattr(module, "_export_as_max", False):
        return nn.functional.prelu(x, w)
    slope = w.reshape(()) if w.numel() == 1 else w.reshape(1, -1, *([1] * (x.dim() - 2)))
    return torch.maximum(x, x * slope)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(1, keepdim=True)`` of [B, C, H, W]; while exporting, as a 1×1 convolution with weights 1/C
    (a constant the runtime folds into an initializer)."""
    if not _ACTIVE:
        return x.mean(1, keepdim=True)
    channels = x.shape[1]
    return nn.functional.conv2d(x, torch.full((1, channels, 1, 1), 1.0 / channels, dtype=x.dtype, device=x.device))


def split_channels(x: torch.Tensor, sizes: list[int] | int) -> tuple[torch.Tensor, ...]:
    """``x.split(sizes, dim=1)`` (an int: that many equal parts, as ``chunk``); while exporting, as slices."""
    sizes = [x.shape[1] // sizes] * sizes if isinstance(sizes, int) else list(sizes)
    if not _ACTIVE:
        return x.split(sizes, dim=1)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(x[:, start:start + size] for start, size in zip(starts, sizes))


@contextmanager
def export_forms(model: nn.Module) -> Iterator[None]:
    """Within this block the forms above are used for ``model`` (its PReLU modules, whatever its architecture)."""
    global _ACTIVE
    previous, original = _ACTIVE, nn.PReLU.forward
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    for m in prelus:
        m._export_as_max = slopes_in_unit_range(m)
    _ACTIVE = True
    nn.PReLU.forward = prelu_as_max  # type: ignore[method-assign]
    try:
        yield
    finally:
        _ACTIVE = previous
        nn.PReLU.forward = original  # type: ignore[method-assign]
        for m in prelus:
            del m._export_as_max
