"""The prune stage's dispatch on prune.method: `none` is a pass-through (no fine-tune, no MLflow run)."""

from __future__ import annotations

import json

import pytest
import torch

from effifusion.core.settings import parse_params
from effifusion.models.registry import build_model, save_checkpoint
from effifusion.training import stages
from effifusion.training.callbacks import PruningCallback
from helpers import tiny_params


def _dense(tmp_path, params):
    torch.manual_seed(0)
    dense = tmp_path / "models" / "dense"
    save_checkpoint(dense / "model.pt", build_model(params["model"], 16000), extra={"val_pesq": 1.25})
    (dense / "discriminator.pt").write_bytes(b"not read by the pass-through, copied as it is")
    return dense


def test_method_none_copies_the_dense_model_without_training(tmp_path, monkeypatch) -> None:
    params = tiny_params(prune__method="none")
    dense = _dense(tmp_path, params)
    monkeypatch.setattr(stages, "fit", lambda *a, **k: pytest.fail("method none must not fine-tune"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out, metrics_path = tmp_path / "models" / "pruned", tmp_path / "metrics" / "prune.json"
    metrics = stages.prune_finetune(params, dense, prepared_dir=tmp_path / "none", out_dir=out,
                                    metrics_path=metrics_path, plots_dir=tmp_path / "plots")
    for f in ("model.pt", "discriminator.pt"):
        assert (out / f).read_bytes() == (dense / f).read_bytes()
    on_disk = json.loads(metrics_path.read_text())
    assert on_disk == metrics
    assert metrics["method"] == "none" and metrics["steps"] == 0 and metrics["conv_sparsity"] == 0.0
    assert 0 < metrics["params_nonzero"] <= metrics["params_total"]  # zero-initialised biases count as zeros
    assert metrics["val_pesq"] == 1.25
    for plot in ("losses.csv", "val.csv", "sparsity.csv"):  # dvc.yaml declares them: they must exist
        assert (tmp_path / "plots" / plot).is_file()
    assert not (tmp_path / "mlflow.db").exists()  # no prune run


def test_method_selects_the_callback(tmp_path) -> None:
    params = tiny_params()
    assert isinstance(stages.pruning_callback(parse_params(params).prune), PruningCallback)


def test_method_none_names_an_unusable_dense_model(tmp_path) -> None:
    params = tiny_params(prune__method="none")
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "model.pt").write_text("not a checkpoint")
    with pytest.raises(Exception, match="model.pt"):
        stages.prune_finetune(params, dense, out_dir=tmp_path / "pruned", metrics_path=tmp_path / "m.json",
                              plots_dir=tmp_path / "plots")
    assert not (tmp_path / "pruned").exists()


def test_an_old_dense_folder_still_loads_with_one_deprecation_line(tmp_path, monkeypatch, capsys) -> None:
    params = tiny_params(prune__method="none")
    dense = _dense(tmp_path, params)
    (dense / "model.pt").rename(dense / "generator.pt")  # a folder written before the rename
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "models" / "pruned"
    stages.prune_finetune(params, dense, prepared_dir=tmp_path / "none", out_dir=out,
                          metrics_path=tmp_path / "m.json", plots_dir=tmp_path / "plots")
    assert (out / "model.pt").read_bytes() == (dense / "generator.pt").read_bytes()
    err = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert err == [f"effifusion: {dense / 'generator.pt'}: deprecated checkpoint name, loaded; rename it to model.pt"]
