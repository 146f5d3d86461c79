import copy

import pytest
import torch
from torch import nn

from effifusion.core.errors import ConfigError
from effifusion.core.settings import parse_params
from effifusion.training.pruning import (
    DynamicPruner,
    count_nonzero,
    cubic_schedule,
    qualified_names,
    select_prunable,
)
from helpers import tiny_params


class Tiny(nn.Module):
    """Conv types of the generator under names that do not all contain "conv"."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.PReLU(6))
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.pw_conv = nn.Conv2d(6, 5, 1)
        self.up = nn.ConvTranspose2d(5, 4, (1, 3), stride=(1, 2))
        self.seq_conv = nn.Conv1d(4, 3, 5, padding=2)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # x [B, 2, T, F]
        x = self.up(self.pw_conv(self.dw(self.enc(x))))
        b, c, t, f = x.shape
        x = self.seq_conv(x.permute(0, 3, 1, 2).reshape(b * f, c, t))
        return self.head(x.mean(-1))


def _model(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def _zeros(params):
    return [int((getattr(m, n + "_mask") == 0).sum()) for m, n in params]


def _numels(params):
    return [getattr(m, n + "_mask").numel() for m, n in params]


def _train_steps(model, pruner, opt, steps, start=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    for s in range(start, start + steps):
        pruner.step(s)
        x = torch.randn(2, 2, 6, 9, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_select_prunable_patterns():
    model = _model()
    names = lambda ps: qualified_names(model, ps)  # noqa: E731
    assert names(select_prunable(model, ["conv"])) == ["pw_conv.weight", "seq_conv.weight"]
    assert names(select_prunable(model, ["all-conv"])) == [
        "enc.0.weight", "dw.weight", "pw_conv.weight", "up.weight", "seq_conv.weight"]
    assert names(select_prunable(model, ["^enc", "up$"])) == ["enc.0.weight", "up.weight"]
    with pytest.raises(ConfigError, match=r"\['head'\].*enc\.0, dw"):
        select_prunable(model, ["head"])  # Linear is not a conv
    with pytest.raises(ConfigError, match="not a valid regex"):
        select_prunable(model, ["conv("])
    with pytest.raises(ConfigError, match=r"prune.layers: \[\] match no convolution module"):
        select_prunable(model, [])  # params.yaml's schema refuses an empty list before


def test_cubic_schedule_endpoints_and_shape():
    assert cubic_schedule(0, 100, 0.3, 0.6) == 0.0
    assert cubic_schedule(0, 100, 0.3, 0.6, initial_amount=0.1) == pytest.approx(0.1)
    assert cubic_schedule(60, 100, 0.3, 0.6) == pytest.approx(0.3)
    assert cubic_schedule(99, 100, 0.3, 0.6) == pytest.approx(0.3)
    assert cubic_schedule(30, 100, 0.3, 0.6) == pytest.approx(0.3 * (1 - 0.5 ** 3))
    assert cubic_schedule(5, 100, 0.4, 0.0) == pytest.approx(0.4)
    values = [cubic_schedule(s, 100, 0.5, 0.8) for s in range(101)]
    assert all(b >= a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruner_hits_schedule_exactly(scope):
    model = _model()
    params = select_prunable(model, ["all-conv"])
    total_steps, every = 37, 3
    pruner = DynamicPruner(params, 0.55, total_steps, 0.7, every, scope=scope)
    numels = _numels(params)
    n = sum(numels)
    assert pruner.ramp_end == 26
    pruned_at = []
    for s in range(total_steps):
        result = pruner.step(s)
        target = pruner.scheduled(s)
        zeros = _zeros(params)
        if result is not None:
            pruned_at.append(s)
            if scope == "global":
                assert sum(zeros) == round(target * n)
            else:
                assert zeros == [round(target * k) for k in numels]
            assert result == pytest.approx(sum(zeros) / n)
            assert target == pytest.approx(cubic_schedule(s, total_steps, 0.55, 0.7)) or s == pruner.ramp_end
    assert pruned_at[0] == 3 and 26 in pruned_at and 25 not in pruned_at and pruned_at[-1] == 26
    final = pruner.sparsity()
    if scope == "global":
        assert final["zeros"] == round(0.55 * n)
    else:
        assert _zeros(params) == [round(0.55 * k) for k in numels]
        assert all(abs(v - 0.55) < 1 / min(numels) for v in final["layers"].values())


def test_pruner_masks_grow_and_prune_smallest_globally():
    model = _model()
    params = select_prunable(model, ["all-conv"])
    pruner = DynamicPruner(params, 0.5, 10, 1.0, 1)
    previous = [getattr(m, n + "_mask").clone() for m, n in params]
    for s in range(10):
        pruner.step(s)
        masks = [getattr(m, n + "_mask") for m, n in params]
        for old, new in zip(previous, masks):
            assert torch.all(new <= old)  # a pruned weight never comes back
        previous = [m.clone() for m in masks]
    assert pruner.sparsity()["overall"] == pytest.approx(round(0.5 * pruner.sparsity()["total"]) /
                                                         pruner.sparsity()["total"])
    def magnitudes(kept):
        return torch.cat([getattr(m, n + "_orig")[getattr(m, n + "_mask") == kept].abs() for m, n in params])

    # With no training in between, global L1 pruning keeps exactly the largest magnitudes.
    kept, gone = magnitudes(1), magnitudes(0)
    assert gone.max() <= kept.min()


def test_pruned_weights_stay_zero_through_optimizer_steps():
    model = _model()
    params = select_prunable(model, ["all-conv"])
    pruner = DynamicPruner(params, 0.4, 12, 0.5, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _train_steps(model, pruner, opt, 12)
    masks = [getattr(m, n + "_mask").clone() for m, n in params]
    _train_steps(model, pruner, opt, 5, start=12, seed=1)  # after the ramp: masks fixed, training goes on
    for (m, n), mask in zip(params, masks):
        assert torch.equal(getattr(m, n + "_mask"), mask)
        assert torch.all(getattr(m, n)[mask == 0] == 0)
    nonzero, total = count_nonzero(model)
    dense_total = sum(p.numel() for p in _model().parameters())
    assert total == dense_total
    assert total - nonzero == pruner.sparsity()["zeros"]


def test_make_permanent_gives_plain_state_dict():
    model = _model()
    params = select_prunable(model, ["conv"])
    pruner = DynamicPruner(params, 0.3, 4, 0.5, 1)
    for s in range(4):
        pruner.step(s)
    x = torch.randn(1, 2, 6, 9)
    before = model(x)
    zeros = pruner.sparsity()["zeros"]
    pruner.make_permanent()
    sd = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in sd)
    fresh = _model(seed=5)
    fresh.load_state_dict(sd)  # strict
    assert torch.allclose(fresh(x), before)
    assert count_nonzero(fresh) == (sum(p.numel() for p in fresh.parameters()) - zeros,
                                    sum(p.numel() for p in fresh.parameters()))
    assert pruner.sparsity()["zeros"] == zeros
    with pytest.raises(RuntimeError):
        pruner.step(5)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruner_resume_matches_uninterrupted(scope):
    total, cut = 20, 7

    def setup():
        model = _model()
        params = select_prunable(model, ["all-conv"])
        pruner = DynamicPruner(params, 0.6, total, 0.8, 2, scope=scope, names=qualified_names(model, params))
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        return model, params, pruner, opt

    model, params, pruner, opt = setup()
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(2, 2, 6, 9, generator=g) for _ in range(total)]

    def run(model, pruner, opt, steps):
        for s in steps:
            pruner.step(s)
            loss = model(data[s]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    run(model, pruner, opt, range(total))
    reference = [getattr(m, n + "_mask").clone() for m, n in params]

    model, params, pruner, opt = setup()
    run(model, pruner, opt, range(cut))
    ckpt = {"model": model.state_dict(), "pruner": pruner.state_dict(), "opt": opt.state_dict()}
    ckpt = copy.deepcopy(ckpt)
    assert any(k.endswith("weight_mask") for k in ckpt["model"])

    model2, params2, pruner2, opt2 = setup()  # fresh objects, the documented order
    model2.load_state_dict(ckpt["model"])
    pruner2.load_state_dict(ckpt["pruner"])
    opt2.load_state_dict(ckpt["opt"])
    assert pruner2.sparsity() == pruner.sparsity()
    run(model2, pruner2, opt2, range(cut, total))
    for ref, (m, n) in zip(reference, params2):
        assert torch.equal(getattr(m, n + "_mask"), ref)


def test_pruner_state_refuses_other_settings():
    model = _model()
    pruner = DynamicPruner(select_prunable(model, ["all-conv"]), 0.3, 10, 0.5, 1)
    state = pruner.state_dict()
    other = DynamicPruner(select_prunable(_model(), ["all-conv"]), 0.4, 10, 0.5, 1)
    with pytest.raises(ConfigError, match="final_amount"):
        other.load_state_dict(state)
    fewer = DynamicPruner(select_prunable(_model(), ["conv"]), 0.3, 10, 0.5, 1)
    with pytest.raises(ConfigError, match="prune.layers"):
        fewer.load_state_dict(state)


@pytest.mark.parametrize("key,value", [("amount", 1.0), ("scope", "module"), ("prune_every_steps", 0),
                                       ("ramp_fraction", 1.5), ("layers", [])])
def test_pruner_settings_are_checked_by_the_schema(key, value):
    with pytest.raises(ConfigError, match=f"params.yaml prune.{key}: "):
        parse_params(tiny_params(**{f"prune__{key}": value}))


def test_count_nonzero_dense_model():
    model = _model()
    with torch.no_grad():
        model.head.weight[0, :2] = 0
    nonzero, total = count_nonzero(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert nonzero == total - 2


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_to_exact_counts_where_compounding_drifts(scope):
    # Pruning "the remaining by (s_t - s_prev) / (1 - s_prev)" with per-call rounding drifts on small
    # tensors; recomputing from scratch gives round(target * n) zeros at every target.
    layers = nn.ModuleList([nn.Conv1d(1, 1, 7), nn.Conv1d(1, 3, 3), nn.Conv2d(1, 1, (1, 5))])
    params = select_prunable(layers, ["all-conv"])
    pruner = DynamicPruner(params, 0.9, 10, 1.0, 1, scope=scope)
    numels = _numels(params)
    for target in (0.07, 0.1, 0.13, 0.13, 0.21, 0.33, 0.34, 0.5, 0.61, 0.77, 0.9):
        pruner.prune_to(target)
        if scope == "global":
            assert sum(_zeros(params)) == round(target * sum(numels))
        else:
            assert _zeros(params) == [round(target * n) for n in numels]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruner_on_cuda_matches_cpu(scope):
    cpu, gpu = _model(), _model().cuda()
    masks = []
    for model in (cpu, gpu):
        params = select_prunable(model, ["all-conv"])
        pruner = DynamicPruner(params, 0.45, 10, 0.5, 1, scope=scope)
        for s in range(10):
            pruner.step(s)
        masks.append([getattr(m, n + "_mask").cpu() for m, n in params])
        assert count_nonzero(model)[1] == sum(p.numel() for p in _model().parameters())
    assert all(torch.equal(a, b) for a, b in zip(*masks))
    x = torch.ones(1, 2, 6, 9)
    assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), atol=1e-5)


def test_all_linear_selects_linear_maps_and_the_pruned_in_projection_is_used():
    """"all-linear" adds every nn.Linear weight and each attention's packed q/k/v in-projection (regexes
    still see convs only). self_attention never calls the attention module, whose pruning pre-hook would
    refresh ``in_proj_weight``: it must compute with weight_orig * mask itself, also after optimiser steps."""
    from effifusion.models.attention import self_attention

    model = _model()
    names = lambda m, ps: qualified_names(m, ps)  # noqa: E731
    assert names(model, select_prunable(model, ["all-linear"])) == ["head.weight"]
    assert names(model, select_prunable(model, ["conv", "all-linear"])) == [
        "pw_conv.weight", "seq_conv.weight", "head.weight"]
    torch.manual_seed(0)
    block = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, batch_first=True), "ffn": nn.Linear(8, 8)})
    params = select_prunable(block, ["all-linear"])
    assert names(block, params) == ["attn.in_proj_weight", "attn.out_proj.weight", "ffn.weight"]
    mha = block["attn"]
    pruner = DynamicPruner(params, 0.5, 1, 0.0, 1)
    pruner.prune_to(0.5)
    with torch.no_grad():
        mha.in_proj_weight_orig.mul_(1.5)  # as an optimiser step: the attribute the pre-hook set is stale now
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.in_proj_weight_orig * mha.in_proj_weight_mask)
        ref.in_proj_bias.copy_(mha.in_proj_bias)
        ref.out_proj.weight.copy_(mha.out_proj.weight_orig * mha.out_proj.weight_mask)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    x = torch.randn(3, 5, 8)
    expected = ref(x, x, x, need_weights=False)[0]
    assert torch.allclose(self_attention(x, mha), expected, atol=1e-6)
    pruner.make_permanent()
    assert torch.allclose(self_attention(x, mha), expected, atol=1e-6)
    assert count_nonzero(mha)[0] == count_nonzero(ref)[0]
