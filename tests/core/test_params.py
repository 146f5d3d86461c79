"""Every setting is checked before any work: one line naming the setting, for every kind of mistake."""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from effifusion.core.config import load_params
from effifusion.core.errors import ConfigError
from effifusion.core.params import check_params
from effifusion.models.registry import check_model_config
from helpers import ROOT, stage_command

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(dotted: str, value):
    params = copy.deepcopy(PARAMS)
    *path, last = dotted.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = value
    return params


def test_the_shipped_params_and_presets_pass():
    check_params(copy.deepcopy(PARAMS))
    for preset in (ROOT / "presets").glob("*.yaml"):
        check_model_config(load_params(preset)["model"])


@pytest.mark.parametrize("dotted, value, message", [
    ("train.batch_size", 0, "train.batch_size: 0 is not valid (an integer >= 1)"),
    ("train.lr", "fast", "train.lr: 'fast' is not valid (a number > 0)"),
    ("runtime.data_workers", "two", "runtime.data_workers: 'two' is not valid (an integer >= 1)"),
    ("seed", "abc", "seed: 'abc' is not valid (an integer >= 0)"),
    ("train.epochs", 0, "train.epochs: 0 is not valid (an integer >= 1)"),
    ("prune.amount", -0.1, r"prune.amount: -0.1 is not valid \(a number in \[0, 1\)\)"),
    ("prune.amount", 1.0, r"prune.amount: 1.0 is not valid \(a number in \[0, 1\)\)"),
    ("prepare.skip_bad_files", "no", "prepare.skip_bad_files: 'no' is not valid (true or false)"),
    ("audio.sample_rate", 22050, "audio.sample_rate: 22050 is not valid (16000: wide-band PESQ"),
    ("train.betas", [0.8], r"train.betas: \[0.8\] is not valid \(a list of 2 item"),
    ("train.augment.prob", 1.5, r"train.augment.prob: 1.5 is not valid \(a number in \[0, 1\]\)"),
    ("train.objective", "diffusion",
     "train.objective: 'diffusion' is not valid (one of metric_gan, predictive, score_matching)"),
    ("runtime.device", "gpu", "runtime.device: 'gpu' is not valid (one of auto, cpu, cuda)"),
    ("train.lr", float("nan"), "train.lr: nan is not valid"),
])
def test_bad_values_name_the_setting(dotted, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)") if "\\" not in message
                       else message):
        check_params(with_value(dotted, value))


def test_missing_renamed_and_unknown_keys():
    params = copy.deepcopy(PARAMS)
    params["train"]["learning_rate"] = params["train"].pop("lr")  # a renamed key
    with pytest.raises(ConfigError, match="params.yaml train.lr: missing setting"):
        check_params(params)
    params = with_value("train.warmup_steps", 100)
    with pytest.raises(ConfigError, match=r"params.yaml train.warmup_steps: unknown setting \(known: objective"):
        check_params(params)
    del params["train"]["warmup_steps"]
    del params["runtime"]
    with pytest.raises(ConfigError, match="params.yaml runtime: missing setting"):
        check_params(params)


@pytest.mark.parametrize("dotted, value, message", [
    ("prune.amount", -0.1, "params.yaml prune.amount: -0.1 is not valid (a number in [0, 1))"),
    ("model.channels", 0, "params.yaml model.channels: 0 is not valid (an integer >= 1)"),
    ("model.arch", "mpsenet",
     "params.yaml model.arch: 'mpsenet' is not a known architecture "
     "(known: effifusion_gan, muse, imse, saf, sgmse, gp_sgmse)"),
])
def test_the_train_stage_fails_on_a_bad_value_before_touching_data(tmp_path, dotted, value, message):
    """No data/ exists here: the error is about the setting, not about a missing dataset."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value(dotted, value)))
    proc = subprocess.run(stage_command("train"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"stage train: error: {message}"]
