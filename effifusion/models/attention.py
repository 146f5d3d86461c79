"""Exact multi-head self-attention whose memory grows linearly with length, in PyTorch and in ONNX.

Plain attention materialises the scores of every query against every key: for the time
conformers of the paper-size generator that is 100 sequences × 4 heads × T² floats, 4.1 GB per
copy for 10 s of audio (T = 1601 frames), and ONNX Runtime keeps several copies (docs/reference.md §7:
18.6 GB peak). Nothing about the maths needs them all at once: each query's softmax only needs its
own row of scores.

- In PyTorch, ``F.scaled_dot_product_attention`` picks a fused kernel (flash attention on CPU and
  CUDA) that never holds the full score matrix; training uses it too, with the same dropout on the
  attention probabilities that ``nn.MultiheadAttention`` applies.
- For ONNX export (inside ``fused_attention()``, which ``inference/export.py`` enters), attention is
  one ``effifusion::mha`` op that the exporter writes as ONNX Runtime's ``com.microsoft.MultiHeadAttention``
  (q, k, v as the projections write them, [N, L, heads·d]). Its CPU kernel is a flash attention: it
  keeps one tile of scores per head in cache, so memory stays linear in length and no pass over a score
  tensor in memory is made (issue 22, docs/benchmarks.md: with it and models/onnx_forms.py, the paper
  model's 10 s input ran in 25.5 s instead of the Scan graph's 43.7 s, peak memory unchanged).
- ``scan_attention()`` keeps the earlier standard-operator form: queries cut into blocks of
  ``BLOCK_QUERIES`` going through a ``Scan`` loop, one block's scores (sequences × heads ×
  BLOCK_QUERIES × T) at a time, each block two plain MatMuls and a Softmax. Both forms are the same
  attention, to float rounding (export parity ≤ 1e-4 at 0.25-30 s, tested).

The projections stay those of an ``nn.MultiheadAttention`` module, so checkpoints keep their keys.

Pruned inner widths (``prune.method: channel``, training/channel_pruning.py): a module may carry
``qk_head_dim`` (d_qk, per-head width of q and k) and ``v_head_dim`` (d_v) below ``head_dim``; its
``in_proj_weight`` is then [heads·(2·d_qk + d_v), C] (q rows, k rows, v rows, each head after head) and
``out_proj`` reads heads·d_v features. The softmax keeps the scale 1/√head_dim of the unpruned module,
so dropping a q/k dimension that contributes nothing to the scores leaves the function unchanged.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Queries per Scan step in exported graphs. Scores of one step: sequences × heads × 32 × length
# floats: 82 MB for the paper model's time attention at 10 s, 0.5 GB at 60 s.
BLOCK_QUERIES = 32

_SCAN = False  # set by scan_attention(): the standard-operator export, and tests of that path in eager mode
_FUSED = False  # set by fused_attention(): ONNX export for ONNX Runtime (com.microsoft.MultiHeadAttention)


@contextmanager
def scan_attention() -> Iterator[None]:
    """Within this block attention runs as a scan over query blocks (a form of standard ONNX operators)."""
    global _SCAN
    previous, _SCAN = _SCAN, True
    try:
        yield
    finally:
        _SCAN = previous


@contextmanager
def fused_attention() -> Iterator[None]:
    """Within this block attention is one ``effifusion::mha`` op, which ONNX export writes as ONNX Runtime's
    ``com.microsoft.MultiHeadAttention`` (``MHA_TRANSLATION``): on the CPU a flash-attention kernel that keeps
    one tile of scores per head in cache, so memory stays linear in length and the softmax never makes a
    pass over a score tensor in memory (docs/benchmarks.md, 2026-12-03).
    Takes precedence over ``scan_attention``."""
    global _FUSED
    previous, _FUSED = _FUSED, True
    try:
        yield
    finally:
        _FUSED = previous


@torch.library.custom_op("effifusion::mha", mutates_args=())
def fused_mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """softmax(q kᵀ · scale) v per head for q, k [N, L, heads·d_qk], v [N, L, heads·d_v] → [N, L, heads·d_v]
    (heads side by side in the last axis, as the projection writes them): MultiHeadAttention's contract."""
    n, length, _ = q.shape
    q, k, v = (t.reshape(n, length, num_heads, t.shape[-1] // num_heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.transpose(1, 2).reshape(n, length, v.shape[1] * v.shape[-1])


@fused_mha.register_fake
def _fused_mha_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float
                     ) -> torch.Tensor:
    return q.new_empty((q.shape[0], q.shape[1], v.shape[-1]))


def _mha_onnx(q: Any, k: Any, v: Any, num_heads: int, scale: float) -> Any:
    """``effifusion::mha`` in ONNX: ONNX Runtime's contrib MultiHeadAttention (CPU and CUDA kernels)."""
    import onnxscript
    from onnx.defs import OpSchema

    # onnx has no schema for ONNX Runtime's contrib ops; the exporter needs one: the part used here
    param = OpSchema.FormalParameter
    schema = OpSchema("MultiHeadAttention", "com.microsoft", 1,
                      inputs=[param("query", "T"), param("key", "T"), param("value", "T")],
                      outputs=[param("output", "T")], type_constraints=[("T", ["tensor(float)"], "")],
                      attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, ""),
                                  OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "")])
    mha = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "MultiHeadAttention", schema)
    return mha(q, k, v, num_heads=num_heads, scale=scale)


def mha_translation() -> dict[Any, Any]:
    """The exporter's ``custom_translation_table`` entry for ``fused_attention()`` graphs."""
    return {torch.ops.effifusion.mha.default: _mha_onnx}


def in_proj_weight(mha: nn.MultiheadAttention) -> torch.Tensor:
    """The q/k/v projection as pruning makes it (weight_orig * weight_mask) when it is pruned.

    torch's pruning recomputes ``in_proj_weight`` in a pre-hook of ``mha``'s own call, which
    ``self_attention`` never makes: the attribute would be the value of the last pruning step.
    """
    orig = getattr(mha, "in_proj_weight_orig", None)
    return mha.in_proj_weight if orig is None else orig * mha.in_proj_weight_mask


def head_dims(mha: nn.MultiheadAttention) -> tuple[int, int]:
    """(d_qk, d_v): per-head widths of q/k and of v; ``head_dim`` unless channel pruning narrowed them."""
    return getattr(mha, "qk_head_dim", mha.head_dim), getattr(mha, "v_head_dim", mha.head_dim)


def softmax_scale(mha: nn.MultiheadAttention) -> float:
    """1/√head_dim of the unpruned module, computed as SDPA computes its default (unpruned: bit-identical)."""
    return 1.0 / math.sqrt(mha.head_dim)


def self_attention(x: torch.Tensor, mha: nn.MultiheadAttention) -> torch.Tensor:
    """``mha(x, x, x)`` for batch-first x [N, L, C], without the [N, heads, L, L] score tensor."""
    n, length, c = x.shape
    heads = mha.num_heads
    d_qk, d_v = head_dims(mha)
    # the projections on [tokens, C]: plain matrix products with their bias (ONNX Gemm)
    x2, weight, bias = x.reshape(n * length, c), in_proj_weight(mha), mha.in_proj_bias
    widths = [heads * d_qk, heads * d_qk, heads * d_v]
    if _FUSED and not mha.training:  # q, k and v each its own product: no split of a packed tensor
        ends = [sum(widths[:i + 1]) for i in range(3)]
        q, k, v = (F.linear(x2, weight[a:b], None if bias is None else bias[a:b]).reshape(n, length, -1)
                   for a, b in zip([0, *ends[:2]], ends))
        out = fused_mha(q, k, v, heads, softmax_scale(mha))
        return mha.out_proj(out.reshape(n * length, heads * d_v)).reshape(n, length, -1)
    qkv = F.linear(x2, weight, bias).reshape(n, length, -1)
    q, k, v = qkv.split(widths, dim=-1)
    q, k, v = (t.reshape(n, length, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    scale = softmax_scale(mha)
    if _SCAN:
        out = blocked_attention(q, k, v, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=mha.dropout if mha.training else 0.0,
                                             scale=scale)
    return mha.out_proj(out.transpose(1, 2).reshape(n * length, heads * d_v)).reshape(n, length, -1)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      block: int = BLOCK_QUERIES, scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v for q, k [N, heads, L, d], v [N, heads, L, d_v], ``block`` queries at a time
    (a scan); ``scale`` defaults to 1/√d (a pruned attention passes its unpruned width's).

    Queries are zero-padded to a whole number of blocks (keys are not, so every real query sees
    exactly the real keys) and the padded rows are dropped at the end.
    """
    from torch._higher_order_ops.scan import scan

    n, heads, length, dim = q.shape
    blocks = (length + block - 1) // block
    q = F.pad(q * (1.0 / math.sqrt(dim) if scale is None else scale), (0, 0, 0, blocks * block - length))
    xs = q.reshape(n, heads, blocks, block, dim).permute(2, 0, 1, 3, 4)  # [blocks, N, heads, block, d]
    # copies: the scan's body may not read two views of one tensor (q, k, v share the projection's)
    keys_t, values = k.transpose(-1, -2).clone(), v.clone()

    def step(carry: torch.Tensor, q_block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return carry.clone(), torch.softmax(q_block @ keys_t, dim=-1) @ values

    _, out = scan(step, torch.zeros(1, dtype=q.dtype, device=q.device), xs)
    return out.permute(1, 2, 0, 3, 4).reshape(n, heads, blocks * block, v.shape[-1])[:, :, :length]


def narrow_inner_widths(mha: nn.MultiheadAttention, qk_drop: list[int], v_drop: list[int]) -> None:
    """Remove q/k dimensions ``qk_drop`` and v dimensions ``v_drop`` from ``mha`` in place.

    Indices are flat over one projection's rows (head h, dimension j: h·d + j), as the packed layout
    stores them; each head must lose as many as every other so the heads keep one width. q and k lose
    the same rows (their product is what the scores sum), v its rows and out_proj the matching columns.
    """
    heads = mha.num_heads
    d_qk, d_v = head_dims(mha)
    for name, drop, d in (("q/k", qk_drop, d_qk), ("v", v_drop, d_v)):
        per_head = [sum(1 for i in set(drop) if i // d == h) for h in range(heads)]
        if any(not 0 <= i < heads * d for i in drop) or len(set(per_head)) > 1 or per_head[0] >= d:
            raise ValueError(f"{name} dimensions {sorted(drop)} are not an equal count < {d} per head "
                             f"of {heads}")
    qk_keep = [i for i in range(heads * d_qk) if i not in set(qk_drop)]
    v_keep = [i for i in range(heads * d_v) if i not in set(v_drop)]
    k_rows, v_rows = [heads * d_qk + i for i in qk_keep], [2 * heads * d_qk + i for i in v_keep]
    rows = torch.tensor(qk_keep + k_rows + v_rows)
    with torch.no_grad():
        weight = mha.in_proj_weight.detach()[rows.to(mha.in_proj_weight.device)].clone()
        mha.in_proj_weight = nn.Parameter(weight, requires_grad=mha.in_proj_weight.requires_grad)
        if mha.in_proj_bias is not None:
            bias = mha.in_proj_bias.detach()[rows.to(mha.in_proj_bias.device)].clone()
            mha.in_proj_bias = nn.Parameter(bias, requires_grad=mha.in_proj_bias.requires_grad)
        out = mha.out_proj
        cols = torch.tensor(v_keep, device=out.weight.device)
        weight = out.weight.detach()[:, cols].clone()
        out.weight = nn.Parameter(weight, requires_grad=out.weight.requires_grad)
        out.in_features = len(v_keep)
    mha.qk_head_dim, mha.v_head_dim = len(qk_keep) // heads, len(v_keep) // heads
