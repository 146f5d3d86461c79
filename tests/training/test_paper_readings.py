"""The two readings of EffiFusion-GAN's parameter counts as presets (docs/presets.md): `paper` (1.08 M dense,
30 % of the conv weights pruned) and `paper-1.75m` (1.75 M dense, pruned to 1.08 M non-zero)."""

from __future__ import annotations

import pytest
import torch

from effifusion.core.config import flatten, load_params
from effifusion.models.registry import build_model
from effifusion.training.pruning import DynamicPruner, count_nonzero, select_prunable
from helpers import ROOT


def _prune_fresh(params: dict) -> tuple[int, int, int, int]:
    """(dense, removed, non-zero before, non-zero after) of the preset's model pruned at its layers/amount."""
    torch.manual_seed(0)
    model = build_model(params["model"], params["audio"]["sample_rate"])
    dense = sum(p.numel() for p in model.parameters())
    before, _ = count_nonzero(model)
    prune = params["prune"]
    pruner = DynamicPruner(select_prunable(model, prune["layers"]), prune["amount"], 1, 0.0, 1, scope=prune["scope"])
    pruner.prune_to(prune["amount"])
    after, total = count_nonzero(model)
    assert total == dense
    return dense, pruner.sparsity()["zeros"], before, after


def test_the_1_75m_reading_counts_1_75m_dense_and_1_08m_after_pruning():
    params = load_params(ROOT / "presets" / "paper-1.75m.yaml")
    dense, removed, before, after = _prune_fresh(params)
    assert dense == 1_728_593 and abs(dense / 1.75e6 - 1) < 0.015
    # only the selected weights were zeroed (a random weight may already be exactly 0)
    assert after == pytest.approx(before - removed, abs=2)
    # a fresh model's norm and attention biases start at 0 (7,105 of them); trained, they are not
    assert 7_105 <= dense - before <= 7_108
    assert dense - removed == 1_080_732 and abs((dense - removed) / 1.08e6 - 1) < 0.005
    assert abs(after / 1.08e6 - 1) < 0.01
    assert removed / dense == pytest.approx(0.375, abs=0.005)  # of ALL parameters; 38 % of conv + linear


def test_the_1_08m_reading_is_the_paper_preset():
    params = load_params(ROOT / "presets" / "paper.yaml")
    dense, removed, _, _ = _prune_fresh(params)
    assert dense == 1_086_033
    convs = select_prunable(build_model(params["model"], 16000), ["all-conv"])
    assert removed == round(0.3 * sum(m.weight.numel() for m, _ in convs))  # 30 % of the conv weights


def test_the_presets_differ_only_in_the_reading():
    paper = flatten(load_params(ROOT / "presets" / "paper.yaml"))
    other = flatten(load_params(ROOT / "presets" / "paper-1.75m.yaml"))
    assert paper.keys() == other.keys()
    assert {k for k in paper if paper[k] != other[k]} == {
        "preset", "model.depthwise_separable", "prune.amount", "prune.layers"}
