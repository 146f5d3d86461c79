"""The experiment is tagged as model training, so MLflow 3's UI opens it on its runs."""

from __future__ import annotations

import mlflow
import pytest

from effifusion.tracking import runs as tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # lock and artifacts in tmp_path
    previous = mlflow.get_tracking_uri()
    yield mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(previous)


def test_new_experiment_is_created_with_the_model_training_kind(store):
    exp_id = tracking.setup("fresh")
    assert store.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_existing_experiment_gets_the_kind_only_when_it_has_none(store):
    old = store.create_experiment("old")  # made before the tag existed
    chosen = store.create_experiment("chosen", tags={tracking.EXPERIMENT_KIND_TAG: "finetuning"})
    assert tracking.setup("old") == old
    assert store.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    tracking.setup("chosen")
    assert store.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "finetuning"  # left alone
