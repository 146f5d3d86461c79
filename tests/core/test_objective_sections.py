"""Sections only one objective reads may be left out of another objective's params (issue 21: a diffusion
model's params need no discriminator), and are still required where they are read."""

from __future__ import annotations

import copy

import pytest
import yaml

from effifusion.core.errors import ConfigError
from effifusion.core.params import OBJECTIVE_SECTIONS, check_params
from helpers import ROOT

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def without(params: dict, dotted: str) -> dict:
    params = copy.deepcopy(params)
    *path, last = dotted.split(".")
    node = params
    for part in path:
        node = node[part]
    del node[last]
    return params


@pytest.mark.parametrize("dotted", sorted(OBJECTIVE_SECTIONS))
@pytest.mark.parametrize("objective", ["metric_gan", "predictive", "score_matching"])
def test_a_section_is_required_only_by_the_objectives_that_read_it(dotted, objective):
    params = copy.deepcopy(PARAMS)
    params["train"]["objective"] = objective
    params = without(params, dotted)
    if objective in OBJECTIVE_SECTIONS[dotted]:
        with pytest.raises(ConfigError, match=rf"^params.yaml {dotted}: missing setting "
                                              rf"\(train.objective '{objective}' needs it\)$"):
            check_params(params)
    else:
        assert check_params(params) is params


def test_a_present_unused_section_is_still_checked():
    params = copy.deepcopy(PARAMS)
    params["train"]["objective"] = "score_matching"
    params["discriminator"]["channels"] = 0
    with pytest.raises(ConfigError, match=r"^params.yaml discriminator.channels: 0 is not valid"):
        check_params(params)
