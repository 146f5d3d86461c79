"""What a model costs: parameter and sparsity counts, and analytic MAC counting helpers.

MACs are counted analytically by walking the model: every conv (standard, depthwise, pointwise,
transposed), every linear layer, the attention projections and the QKᵀ / AV matmuls over the real
sequence lengths. Element-wise work (norms, activations, sigmoid, atan2, masks) is not counted, as
usual for MACs. Zeros left by pruning are counted too: unstructured sparsity does not lower
dense-kernel cost. Each architecture's ``macs(n_frames)`` composes these helpers.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from effifusion.models.base import CONV_TYPES


def conv_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every convolution, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CONV_TYPES)]


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_macs(conv: nn.Module, spatial: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(MACs, output spatial size) of one Conv1d / Conv2d / ConvTranspose2d on an input of ``spatial``."""
    k = conv.kernel_size
    per_position = conv.in_channels * conv.out_channels // conv.groups
    for kd in k:
        per_position *= kd
    if isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d)):  # each input position scatters a k-window
        out = tuple(
            (s - 1) * st - 2 * p + d * (kd - 1) + op + 1
            for s, kd, st, p, d, op in zip(spatial, k, conv.stride, conv.padding, conv.dilation,
                                           conv.output_padding)
        )
        positions = spatial
    else:
        out = tuple(_conv_out(s, kd, st, p, d)
                    for s, kd, st, p, d in zip(spatial, k, conv.stride, conv.padding, conv.dilation))
        positions = out
    n = 1
    for s in positions:
        n *= s
    return per_position * n, out


def conv_chain_macs(module: nn.Module, spatial: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """MACs of a module's convs taken in registration order, each fed the previous one's output size.

    Holds where convs are applied in sequence ("same"-padded layers, then down/up-sampling convs, then
    1×1 convs), as in MP-SENet-style encoders and decoders.
    """
    total = 0
    for _, conv in conv_modules(module):
        macs, spatial = conv_macs(conv, spatial)
        total += macs
    return total, spatial


def conformer_macs(ffn_linears: list[nn.Linear], dim: int, conv_module: nn.Module, n_seq: int, length: int,
                   qk_width: int | None = None, v_width: int | None = None) -> dict[str, int]:
    """MACs of one conformer (FFN linears, multi-head attention of width ``dim``, conv module) applied to
    ``n_seq`` sequences of ``length`` tokens. ``qk_width`` / ``v_width``: the attention's inner q/k and v
    widths summed over heads (``dim`` each unless channel pruning narrowed them)."""
    qk = dim if qk_width is None else qk_width
    v = dim if v_width is None else v_width
    tokens = n_seq * length
    linear = sum(tokens * m.in_features * m.out_features for m in ffn_linears)
    projections = tokens * (dim * (2 * qk + v) + v * dim)  # in_proj (Q, K, V) + out_proj
    matmuls = n_seq * length * length * (qk + v)  # QKᵀ and AV, summed over heads
    conv, _ = conv_chain_macs(conv_module, (length,))
    return {"ffn": linear, "attention_projections": projections, "attention_matmuls": matmuls,
            "conv_module": conv * n_seq}


def frames_for(seconds: float, sample_rate: int, hop_length: int) -> int:
    """STFT frames of a centred transform of ``seconds`` of audio."""
    return 1 + int(round(seconds * sample_rate)) // hop_length


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Dense and non-zero parameter counts, overall and over conv weights, plus per-conv-layer sparsity."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    per_layer: dict[str, float] = {}
    conv_total = conv_nonzero = 0
    for name, conv in conv_modules(model):
        w = conv.weight
        nz = int((w != 0).sum())
        conv_total += w.numel()
        conv_nonzero += nz
        per_layer[name] = round(1.0 - nz / w.numel(), 6)
    return {
        "params_total": total,
        "params_nonzero": nonzero,
        "sparsity": round(1.0 - nonzero / total, 6) if total else 0.0,
        "conv_weights_total": conv_total,
        "conv_weights_nonzero": conv_nonzero,
        "conv_sparsity": round(1.0 - conv_nonzero / conv_total, 6) if conv_total else 0.0,
        "sparsity_per_conv_layer": per_layer,
    }


def traced_macs(model: nn.Module, run: Any, parts: dict[str, nn.Module] | None = None) -> dict[str, int]:
    """MACs of one forward pass (``run()``, batch 1) counted by hooks, for models whose layout is easier
    to trace than to walk: every conv / linear from its real output size, plus what a module reports
    itself for work that is no conv (``matmul_macs(t, f)``: attention products; ``extra_macs(t, f)``:
    e.g. deformable sampling), on its input map [1, C, t, f]. ``parts`` (name → submodule) get their
    own totals; "total" is the sum over the model."""
    import torch

    counts: dict[int, int] = {}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        macs = 0
        if isinstance(module, CONV_TYPES):
            kernel = 1
            for k in module.kernel_size:
                kernel *= k
            source = inputs[0] if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)) else output
            macs = source[0, 0].numel() * module.in_channels * module.out_channels * kernel // module.groups
        elif isinstance(module, nn.Linear):
            macs = output.numel() // output.shape[-1] * module.in_features * module.out_features
        for name in ("matmul_macs", "extra_macs"):
            if hasattr(module, name):
                _, _, t, f = inputs[0].shape
                macs += getattr(module, name)(t, f)
        counts[id(module)] = counts.get(id(module), 0) + macs

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    out = {name: sum(counts.get(id(m), 0) for m in part.modules()) for name, part in (parts or {}).items()}
    out["total"] = sum(counts.values())
    return out
