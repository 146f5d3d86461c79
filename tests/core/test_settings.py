"""Typed settings: params.yaml checked by the schema, then one frozen object per section (core/settings.py)."""

from __future__ import annotations

import copy
import dataclasses
import typing

import pytest
import yaml

from effifusion.core.config import load_params, load_settings
from effifusion.core.errors import ConfigError
from effifusion.core.params import SCHEMA
from effifusion.core.settings import (
    ExportConfig,
    Params,
    PruneConfig,
    Section,
    TrainConfig,
    as_settings,
    parse_params,
    parse_section,
)
from helpers import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _section_classes(cls: type[Section]):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        for hint in (hints[f.name], *typing.get_args(hints[f.name])):
            if isinstance(hint, type) and issubclass(hint, Section):
                yield f.name, hint


def _mirrors(cls: type[Section], schema: dict, where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls) if f.init and not (cls is Params and f.name == "model")]
    assert names == list(schema), where
    for name, sub in _section_classes(cls):
        assert sub.WHERE == f"{where}.{name}".lstrip("."), sub
        _mirrors(sub, schema[name], sub.WHERE)


def test_every_schema_section_has_its_dataclass_field_for_field():
    _mirrors(Params, SCHEMA, "")


def test_the_shipped_params_and_presets_parse_and_keep_the_checked_dict():
    params = load_settings(ROOT / "params.yaml")
    assert params.raw == load_params(ROOT / "params.yaml")
    assert params.export.parity_lengths_s == tuple(PARAMS["export"]["parity_lengths_s"])
    assert params.train.betas == tuple(PARAMS["train"]["betas"]) and params.prune.layers == ("all-conv",)
    assert params.model == PARAMS["model"] and params.export.sampler == {}
    assert params.runtime.evaluate_device == PARAMS["runtime"]["evaluate_device"]
    for preset in (ROOT / "presets").glob("*.yaml"):
        if preset.stem != "base":
            assert load_settings(preset).raw == load_params(preset)


def test_ints_for_float_settings_become_floats_and_the_file_values_stay():
    raw = copy.deepcopy(PARAMS)
    raw["download"]["timeout_s"] = 60
    raw["mix_unseen"]["snrs_db"] = [5, 0.5]
    raw["prune"]["amount"] = 0
    params = parse_params(raw)
    assert type(params.download.timeout_s) is float and params.download.timeout_s == 60.0
    assert params.mix_unseen.snrs_db == (5.0, 0.5) and all(type(x) is float for x in params.mix_unseen.snrs_db)
    assert type(params.prune.amount) is float and type(params.prune.epochs) is int
    assert params.prune.to_dict()["amount"] == 0 and type(params.prune.to_dict()["amount"]) is int  # as written
    assert params.raw is raw


def test_sections_one_objective_reads_are_none_when_absent():
    raw = copy.deepcopy(PARAMS)
    raw["train"]["objective"] = "score_matching"
    del raw["discriminator"], raw["train"]["loss_weights"]
    params = parse_params(raw)
    assert params.discriminator is None and params.train.loss_weights is None
    assert params.train.score_matching.ema_decay == PARAMS["train"]["score_matching"]["ema_decay"]


@pytest.mark.parametrize("dotted, value, message", [
    ("export.opset", 11, "params.yaml export.opset: 11 is not valid (an integer >= 18)"),
    ("train.lr", "fast", "params.yaml train.lr: 'fast' is not valid (a number > 0)"),
    ("runtime.evaluate_device", "auto", "params.yaml runtime.evaluate_device: 'auto' is not valid (one of cpu, cuda)"),
    ("evaluate.rtf_seconds", 601, r"params.yaml evaluate.rtf_seconds: 601 is not valid (a number in [0.1, 600])"),
])
def test_the_schema_check_runs_first_with_its_messages(dotted, value, message):
    raw = copy.deepcopy(PARAMS)
    section, key = dotted.split(".")
    raw[section][key] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert str(err.value) == message


def test_as_settings_passes_typed_objects_and_parses_mappings():
    params = parse_params(copy.deepcopy(PARAMS))
    assert as_settings(params) is params and as_settings(params.export, ExportConfig) is params.export
    assert as_settings(copy.deepcopy(PARAMS)) == params
    assert as_settings(PARAMS["prune"], PruneConfig) == params.prune
    with pytest.raises(ConfigError, match=r"params.yaml export.parity_lengths_s: \[\] is not valid"):
        parse_section(ExportConfig, {**PARAMS["export"], "parity_lengths_s": []})
    with pytest.raises(ConfigError, match="train.augment.snr_db"):  # the checks across a section's settings too
        parse_section(TrainConfig, {**PARAMS["train"], "augment": {**PARAMS["train"]["augment"], "snr_db": [9, 1]}})


def test_settings_are_frozen_and_built_in_code_give_their_dict():
    export = ExportConfig(opset=18, parity_lengths_s=(0.5, 1.0), parity_tolerance=1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        export.opset = 19  # type: ignore[misc]
    assert export.to_dict() == {"opset": 18, "parity_lengths_s": [0.5, 1.0], "parity_tolerance": 1e-4, "sampler": {},
                                "precision": "fp32"}
    changed = dataclasses.replace(parse_params(copy.deepcopy(PARAMS)).export, opset=19)
    assert changed.to_dict()["opset"] == 19  # a changed copy no longer claims the file's values
