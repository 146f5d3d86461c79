"""The export forms (models/onnx_forms.py): the same function as the modules' own forward, in eager mode.

The ONNX graphs they produce are checked against PyTorch by the export parity tests
(tests/inference/test_export.py, 0.25-30 s); here each form is compared with the module it replaces.
"""

from __future__ import annotations

import torch
from torch import nn

from effifusion.models.attention import fused_attention, self_attention
from effifusion.models.effifusion_gan.generator import ConformerBlock, ConvModule, FeedForward
from effifusion.models.onnx_forms import channel_mean, export_forms, split_channels


def test_prelu_as_max_is_bit_exact_for_slopes_in_the_unit_range_and_kept_otherwise() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 3) * 10
    inside, outside, single = nn.PReLU(5), nn.PReLU(5), nn.PReLU()
    with torch.no_grad():
        inside.weight.copy_(torch.tensor([0.0, 0.25, 0.5, 1.0, 0.013]))
        outside.weight.copy_(torch.tensor([0.1, -0.2, 0.5, 1.5, 0.3]))
    want = [m(x) for m in (inside, outside, single)]
    root = nn.ModuleList([inside, outside, single])
    with export_forms(root):
        assert inside._export_as_max and not outside._export_as_max and single._export_as_max
        got = [m(x) for m in (inside, outside, single)]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert not hasattr(inside, "_export_as_max") and nn.PReLU.forward is not None
    assert torch.equal(inside(x), want[0])  # the module's own forward is back


def test_conformer_export_forms_compute_the_same_function() -> None:
    torch.manual_seed(0)
    block = ConformerBlock(16, num_heads=4, ffn_mult=4, conv_kernel=7, attn_dropout=0.1, ffn_dropout=0.1,
                           dual_norm=True).eval()
    with torch.no_grad():
        for m in block.modules():  # a batch norm that is not the identity
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 11, 16)
    with torch.no_grad():
        want_conv, want_ffn, want = block.conv_module(x), block.ffn1(x, 0.5), block(x)
        with export_forms(block), fused_attention():
            got_conv, got_ffn, got = block.conv_module(x), block.ffn1(x, 0.5), block(x)
    torch.testing.assert_close(got_conv, want_conv, atol=1e-5, rtol=1e-5)
    assert torch.equal(got_ffn, want_ffn)  # the ½ folded into the last layer: bit for bit
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert isinstance(block.conv_module, ConvModule) and isinstance(block.ffn1, FeedForward)


def test_fused_attention_equals_the_module() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False)[0]
        with fused_attention():
            got = self_attention(x, mha)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_channel_norm_as_convolutions_computes_the_same_function() -> None:
    from effifusion.models.saf.model import ChannelNorm

    torch.manual_seed(0)
    norm = ChannelNorm(6).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    with torch.no_grad():
        want = norm(x)
        torch.testing.assert_close(want, nn.functional.layer_norm(x.movedim(1, -1), (6,), norm.weight, norm.bias,
                                                                  norm.eps).movedim(-1, 1), atol=1e-5, rtol=1e-5)
        with export_forms(norm):
            got = norm(x)
            mean = channel_mean(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean, x.mean(1, keepdim=True), atol=1e-6, rtol=1e-6)
    assert mean.shape == (2, 1, 5, 7)


def test_split_channels_as_slices_gives_the_same_tensors() -> None:
    x = torch.randn(2, 12, 3, 5)
    for sizes in (4, [2, 6, 4]):
        want = x.chunk(sizes, dim=1) if isinstance(sizes, int) else x.split(sizes, dim=1)
        eager = split_channels(x, sizes)
        with export_forms(nn.Identity()):
            exported = split_channels(x, sizes)
        assert len(eager) == len(exported) == len(want)
        for a, b, c in zip(eager, exported, want):
            assert torch.equal(a, c) and torch.equal(b, c)
