"""Pruning as a callback: it reparametrises before optimisers exist, steps on schedule, allows model
selection only at the final sparsity, and writes its sparsity files at the end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from effifusion.core.errors import ConfigError
from effifusion.core.settings import PruneConfig, parse_section
from effifusion.training.callbacks import PruningCallback
from effifusion.training.tasks import TASKS, task_class

PRUNE_SECTION = {"method": "l1_unstructured", "amount": 0.5, "layers": ["all-conv"], "scope": "global", "epochs": 1,
                 "max_steps_per_epoch": 0, "ramp_fraction": 0.5, "prune_every_steps": 1, "lr": 1e-3}
PRUNE = parse_section(PruneConfig, PRUNE_SECTION)


def test_pruning_callback_schedule_selection_and_files(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Conv1d(4, 1, 1))
    cb = PruningCallback(PRUNE)
    cb.on_model(model, total_steps=4)
    assert hasattr(model[0], "weight_orig")  # reparametrised before any optimiser is created
    assert not cb.selectable()
    logged = [cb.on_step_end(s) for s in range(2)]
    assert logged[0] is None
    assert logged[1]["conv_sparsity"] == pytest.approx(0.4375, abs=0.05)  # the cubic ramp
    assert not cb.selectable()
    logged += [cb.on_step_end(s) for s in range(2, 4)]
    assert cb.selectable()  # ramp over 2 of 4 steps: at 0.5 from step 2 on
    assert [r["step"] for r in cb.history()] == [s for s, x in enumerate(logged) if x]
    metrics = cb.on_finish(model, tmp_path, tmp_path / "plots")
    assert metrics["conv_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert not hasattr(model[0], "weight_orig")  # masks made permanent
    assert json.loads((tmp_path / "sparsity.json").read_text())["overall"] == metrics["conv_sparsity"]
    assert (tmp_path / "plots" / "sparsity.csv").read_text().startswith("step,sparsity,target\n0,")
    assert cb.artifacts == [tmp_path / "sparsity.json"]


def test_pruning_callback_state_round_trip():
    model = nn.Sequential(nn.Conv1d(2, 4, 3))
    a = PruningCallback(PRUNE)
    a.on_model(model, total_steps=4)
    a.on_step_end(0)
    b = PruningCallback(PRUNE)
    b.on_model(model, total_steps=4)
    b.load_state_dict(a.state_dict())
    assert b.history() == a.history() and b.pruner.target == a.pruner.target
    assert a.config() == {"prune": PRUNE_SECTION}  # part of the resume identity: as params.yaml wrote it


def test_zero_amount_prunes_nothing(tmp_path):
    model = nn.Sequential(nn.Conv1d(2, 4, 3))
    cb = PruningCallback(replace(PRUNE, amount=0.0))
    cb.on_model(model, total_steps=4)
    assert cb.on_step_end(0) is None and cb.selectable()
    assert cb.on_finish(model, tmp_path, tmp_path) == {"conv_sparsity": 0.0}


def test_objectives_by_name():
    assert set(TASKS) == {"metric_gan", "predictive", "score_matching"}
    with pytest.raises(ConfigError, match="train.objective: 'diffusion' is not a known objective"):
        task_class("diffusion")
