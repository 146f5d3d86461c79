"""Exact multi-head self-attention whose memory grows linearly with length, in PyTorch and in ONNX.

Plain attention materialises the scores of every query against every key: for the time
conformers of the paper-size generator that is 100 sequences × 4 heads × T² floats, 4.1 GB per
copy for 10 s of audio (T = 1601 frames), and ONNX Runtime keeps several copies (REFERENCE §10:
18.6 GB peak). Nothing about the maths needs them all at once: each query's softmax only needs its
own row of scores.

- In PyTorch, ``F.scaled_dot_product_attention`` picks a fused kernel (flash attention on CPU and
  CUDA) that never holds the full score matrix; training uses it too, with the same dropout on the
  attention probabilities that ``nn.MultiheadAttention`` applies.
- For ONNX export (inside ``scan_attention()``, which ``inference/export.py`` enters), queries are
  cut into blocks of ``BLOCK_QUERIES`` and the blocks go through a ``Scan`` loop: one block's
  scores (sequences × heads × BLOCK_QUERIES × T) exist at a time, and each block is two plain
  MatMuls and a Softmax, so ONNX Runtime uses its fast GEMM kernels. The result is the same
  attention, to float rounding (export parity ≤ 1e-4 at 0.5-30 s, tested).

The projections stay those of an ``nn.MultiheadAttention`` module, so checkpoints keep their keys.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Queries per Scan step in exported graphs. Scores of one step: sequences × heads × 32 × length
# floats: 82 MB for the paper model's time attention at 10 s, 0.5 GB at 60 s.
BLOCK_QUERIES = 32

_SCAN = False  # set by scan_attention(): ONNX export, and tests of that path in eager mode


@contextmanager
def scan_attention() -> Iterator[None]:
    """Within this block attention runs as a scan over query blocks (the form ONNX export captures)."""
    global _SCAN
    previous, _SCAN = _SCAN, True
    try:
        yield
    finally:
        _SCAN = previous


def in_proj_weight(mha: nn.MultiheadAttention) -> torch.Tensor:
    """The q/k/v projection as pruning makes it (weight_orig * weight_mask) when it is pruned.

    torch's pruning recomputes ``in_proj_weight`` in a pre-hook of ``mha``'s own call, which
    ``self_attention`` never makes: the attribute would be the value of the last pruning step.
    """
    orig = getattr(mha, "in_proj_weight_orig", None)
    return mha.in_proj_weight if orig is None else orig * mha.in_proj_weight_mask


def self_attention(x: torch.Tensor, mha: nn.MultiheadAttention) -> torch.Tensor:
    """``mha(x, x, x)`` for batch-first x [N, L, C], without the [N, heads, L, L] score tensor."""
    n, length, channels = x.shape
    heads = mha.num_heads
    q, k, v = F.linear(x, in_proj_weight(mha), mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, length, heads, channels // heads).transpose(1, 2) for t in (q, k, v))
    if _SCAN:
        out = blocked_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=mha.dropout if mha.training else 0.0)
    return mha.out_proj(out.transpose(1, 2).reshape(n, length, channels))


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      block: int = BLOCK_QUERIES) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for q, k, v [N, heads, L, d], ``block`` queries at a time (a scan).

    Queries are zero-padded to a whole number of blocks (keys are not, so every real query sees
    exactly the real keys) and the padded rows are dropped at the end.
    """
    from torch._higher_order_ops.scan import scan

    n, heads, length, dim = q.shape
    blocks = (length + block - 1) // block
    q = F.pad(q * dim ** -0.5, (0, 0, 0, blocks * block - length))
    xs = q.reshape(n, heads, blocks, block, dim).permute(2, 0, 1, 3, 4)  # [blocks, N, heads, block, d]
    # copies: the scan's body may not read two views of one tensor (q, k, v share the projection's)
    keys_t, values = k.transpose(-1, -2).clone(), v.clone()

    def step(carry: torch.Tensor, q_block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return carry.clone(), torch.softmax(q_block @ keys_t, dim=-1) @ values

    _, out = scan(step, torch.zeros(1, dtype=q.dtype, device=q.device), xs)
    return out.permute(1, 2, 0, 3, 4).reshape(n, heads, blocks * block, dim)[:, :, :length]
