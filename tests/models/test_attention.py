"""Attention in memory linear in length gives nn.MultiheadAttention's result, in both forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effifusion.models.attention import BLOCK_QUERIES, blocked_attention, scan_attention, self_attention


@pytest.fixture
def mha() -> nn.MultiheadAttention:
    torch.manual_seed(0)
    return nn.MultiheadAttention(16, 4, dropout=0.2, batch_first=True).eval()


@pytest.mark.parametrize("length", [1, 7, BLOCK_QUERIES, BLOCK_QUERIES + 1, 100])
def test_both_forms_equal_multihead_attention(mha, length):
    x = torch.randn(3, length, 16)
    with torch.no_grad():
        expected, _ = mha(x, x, x, need_weights=False)
        fused = self_attention(x, mha)
        with scan_attention():
            scanned = self_attention(x, mha)
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.allclose(scanned, expected, atol=1e-6)  # padded query rows never leak into real ones


def test_blocked_attention_is_softmax_attention_for_any_block():
    q, k, v = (torch.randn(2, 3, 45, 8) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    for block in (1, 4, 45, 64):
        assert torch.allclose(blocked_attention(q, k, v, block), expected, atol=1e-6), block


def test_training_applies_attention_dropout_and_passes_gradients(mha):
    mha.train()
    x = torch.randn(2, 20, 16, requires_grad=True)
    torch.manual_seed(1)
    a = self_attention(x, mha)
    torch.manual_seed(2)
    b = self_attention(x, mha)
    assert not torch.allclose(a, b)  # dropout on the attention probabilities, as nn.MultiheadAttention
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and mha.in_proj_weight.grad is not None
