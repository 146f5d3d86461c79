"""Presets as changes to presets/base.yaml: what `effifusion preset NAME` writes, --diff, --list, and
the rules of a preset's file (core/config.py, docs/presets.md)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil

import pytest
import yaml

from effifusion.cli import main as cli_main
from effifusion.core import config
from effifusion.core.config import (
    ConfigError,
    apply_preset,
    flatten,
    load_preset,
    merge_preset,
    preset_diff,
    preset_names,
    read_params,
)
from effifusion.core.params import check_params
from helpers import ROOT

PRESETS = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml") if p.stem != "base")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository root with a copy of presets/ and params.yaml, as the working directory."""
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


@pytest.fixture
def mini(tmp_path, monkeypatch):
    """A repository with a small base.yaml of the same shape, to try the rules on."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "base.yaml").write_text(
        "# header of base\n"
        "preset: base\n"
        "seed: 1   # the seed\n"
        "\n"
        "# above train\n"
        "train:                # dense training\n"
        "  lr: 0.004           # paper: 5e-4\n"
        "  epochs: 6           # 6 x 20 steps\n"
        "                      # (40 pairs)\n"
        "  weights: {a: 1, b: 2}\n"
        "  augment:            # dynamic mixing\n"
        "    enabled: true     # demo: on\n"
        "    prob: 0.8\n"
        "model:                # the architecture\n"
        "  arch: one\n"
        "  width: 16           # C\n"
        "  depth: 2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return presets


def write(folder: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


# ---- the shipped presets ---------------------------------------------------------------------------------

def test_the_names_are_kept_and_base_is_no_preset():
    assert set(PRESETS) == {"demo", "paper", "paper-1.75m", "muse", "muse-demo", "imse", "imse-demo", "saf",
                            "saf-demo", "sgmse", "gp-sgmse", "gp-sgmse-demo"}
    assert list(preset_names()) == PRESETS
    with pytest.raises(ConfigError, match="'base' is no preset"):
        merge_preset("base")


def test_demo_writes_the_repositorys_params_yaml():
    """base.yaml is the demo with its comments: `effifusion preset demo` gives params.yaml back, byte for byte."""
    text, params = merge_preset("demo")
    assert params == read_params(ROOT / "params.yaml")
    assert text == (ROOT / "params.yaml").read_text()


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_a_complete_valid_params_file(name):
    from effifusion.models.registry import check_model_config

    text, params = merge_preset(name)
    assert check_params(params) is params and params["preset"] == name
    check_model_config(params["model"])
    assert yaml.safe_load(text) == params == load_preset(name)
    assert read_params(ROOT / "presets" / f"{name}.yaml") == params   # a reader of the file gets it whole
    # every key of base.yaml outside `model`: no section or key is lost or added by the merge
    base = read_params(ROOT / "presets" / "base.yaml")
    def outside_model(p: dict) -> set[str]:
        return {k for k in flatten(p) if not k.startswith("model.")}

    assert outside_model(params) == outside_model(base)


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_holds_only_what_it_changes(name):
    """Each line of a preset's file changes a value of what it starts from, or gives it another comment;
    never a copy of base's line (presets stay minimal)."""
    path = ROOT / "presets" / f"{name}.yaml"
    over, _ = config._parse(path.read_text(), name)
    parent = over.pop(config.EXTENDS, None)
    if parent is None:
        start, _ = config._parse((ROOT / "presets" / "base.yaml").read_text(), "base")
    else:
        assert parent.parsed in PRESETS and parent.parsed != name
        start, _ = config._resolve(ROOT / "presets" / f"{parent.parsed}.yaml", ROOT / "presets", ())

    def check(over: dict, start: dict, prefix: str = "") -> None:
        for key, o in over.items():
            s = start[key]
            if o.children is not None and s.children is not None and not config._new_arch(prefix + key, s, o):
                assert o.children, f"{name}: {prefix}{key} changes nothing"
                check(o.children, s.children, f"{prefix}{key}.")
            elif config._value(o) == config._value(s):
                assert o.comment and (o.comment, o.more) != (s.comment, s.more), \
                    f"{name}: {prefix}{key} repeats the value and comment it starts from"

    check(over, start)


def test_paper_1_75m_is_paper_with_the_other_reading(tmp_path):
    paper = tmp_path / "params.yaml"
    paper.write_text(merge_preset("paper")[0])
    assert [(k, config.yaml_value(a), config.yaml_value(b)) for k, a, b in preset_diff("paper-1.75m", paper)] == [
        ("preset", "paper", "paper-1.75m"),
        ("model.depthwise_separable", "true", "encoder"),
        ("prune.amount", "0.3", "0.38"),
        ("prune.layers", "[all-conv]", "[all-conv, all-linear]")]


# ---- the command -----------------------------------------------------------------------------------------

def test_diff_prints_exactly_the_changed_keys_and_writes_nothing(repo, capsys):
    before = (repo / "params.yaml").read_bytes()
    assert cli_main(["preset", "paper", "--diff"]) == 0
    lines = capsys.readouterr().out.splitlines()
    changed = {k for k, v in flatten(load_preset("paper")).items() if flatten(read_params("params.yaml")).get(k) != v}
    assert {line.split(":")[0] for line in lines} == changed and len(lines) == len(changed)
    assert "train.lr: 0.004 -> 0.0005" in lines and "corpus.name: demo -> voicebank_demand" in lines
    assert "model.channels: 16 -> 64" in lines and "train.augment.enabled: true -> false" in lines
    assert (repo / "params.yaml").read_bytes() == before and sorted(os.listdir(repo)) == [
        "dvc.yaml", "params.yaml", "presets"]
    assert cli_main(["preset", "demo", "--diff"]) == 0
    assert capsys.readouterr().out == "params.yaml already holds preset 'demo'\n"
    assert cli_main(["preset", "muse-demo", "--diff"]) == 0   # another architecture: keys on one side only
    out = capsys.readouterr().out.splitlines()
    assert "model.arch: effifusion_gan -> muse" in out and "model.num_tsblocks: 1 -> (absent)" in out
    assert "model.heads: (absent) -> [1, 2, 4]" in out


def test_list_names_each_preset_and_its_parent(repo, capsys):
    assert cli_main(["preset", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == PRESETS
    assert "paper-1.75m  (extends paper)" in out and "demo" in out
    assert cli_main(["preset"]) == 2
    assert "name a preset (or --list them)" in capsys.readouterr().err


def test_preset_then_back_to_demo_restores_params_yaml(repo, capsys):
    for name in PRESETS:
        assert cli_main(["preset", name]) == 0
        assert read_params("params.yaml") == load_preset(name)
        assert (repo / "params.yaml").read_text() == merge_preset(name)[0]
        assert cli_main(["preset", name, "--diff"]) == 0
        assert capsys.readouterr().out.endswith(f"params.yaml already holds preset {name!r}\n")
    assert cli_main(["preset", "demo"]) == 0
    assert (repo / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()


@pytest.mark.parametrize("text, message", [
    ("extends: paper\npreset: bad\ntrain:\n  lr: fast\n", r"^presets/bad.yaml: train.lr: 'fast' is not valid"),
    ("preset: bad\ntrain:\n  lrr: 0.1\n", r"^presets/bad.yaml:3: train.lrr is not a setting of presets/base.yaml"),
    ("preset: bad\ntrain:\n  betas:\n  - 0.9\n", r"^presets/bad.yaml:4: not a `key: value` line"),
    ("preset: bad\ntrain:\n  betas: [0.9,\n    0.99]\n", r"^presets/bad.yaml:4: not a `key: value` line"),
    ("preset: bad\ntrain:\n   lr: 0.1\n", r"^presets/bad.yaml:3: 'lr' is not indented as a key"),
    ("preset: bad\ntrain: {lr: 0.1}\n", r"^presets/bad.yaml: train.objective: missing setting"),
    ("preset: other\n", r"^presets/bad.yaml: gives `preset: other`; a preset sets its own name"),
    ("extends: nope\npreset: bad\n", r"^presets/bad.yaml:1: `extends: nope` names no preset"),
    ("preset: bad\nseed: [1\n", r"^presets/bad.yaml:3: not valid YAML"),
    ("preset: bad\n# a note at the end\n", r"^presets/bad.yaml: comment lines below the last setting"),
])
def test_a_bad_preset_is_one_line_and_leaves_params_yaml_untouched(repo, capsys, text, message):
    write(repo / "presets", "bad", text)
    before = (repo / "params.yaml").read_bytes()
    assert cli_main(["preset", "bad"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("effifusion preset: error: ")
    assert re.search(message, err.removeprefix("effifusion preset: error: ")), err
    assert (repo / "params.yaml").read_bytes() == before
    assert sorted(os.listdir(repo)) == ["dvc.yaml", "params.yaml", "presets"]   # no temporary left


def test_the_write_is_atomic(repo, monkeypatch):
    """A failure while writing leaves the old params.yaml whole (core/files.atomic_path) and no temporary."""
    before = (repo / "params.yaml").read_bytes()
    real = pathlib.Path.write_text

    def half_then_fail(self, data, *args, **kwargs):
        real(self, data[:len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        apply_preset("paper")
    monkeypatch.undo()
    assert (repo / "params.yaml").read_bytes() == before
    assert sorted(os.listdir(repo)) == ["dvc.yaml", "params.yaml", "presets"]


# ---- the rules of a preset's file (a small base.yaml) ----------------------------------------------------

def test_a_line_replaces_base_line_and_a_mapping_line_keeps_its_comment(mini):
    write(mini, "p", "# header of p\n"
                     "preset: p\n"
                     "train:\n"
                     "  epochs: 50\n"
                     "  lr: 0.0005      # p's own rate\n"
                     "  augment:\n"
                     "    enabled: false\n")
    text, params = merge_preset("p")
    assert text == ("# header of p\n"
                    "preset: p\n"
                    "seed: 1   # the seed\n"
                    "\n"
                    "# above train\n"
                    "train:                # dense training\n"
                    "  lr: 0.0005      # p's own rate\n"
                    "  epochs: 50\n"                     # base's comment described base's value: not kept
                    "  weights: {a: 1, b: 2}\n"
                    "  augment:            # dynamic mixing\n"
                    "    enabled: false\n"
                    "    prob: 0.8\n"
                    "model:                # the architecture\n"
                    "  arch: one\n"
                    "  width: 16           # C\n"
                    "  depth: 2\n")
    assert params["train"] == {"lr": 0.0005, "epochs": 50, "weights": {"a": 1, "b": 2},
                               "augment": {"enabled": False, "prob": 0.8}}


def test_a_flow_value_replaces_the_whole_value(mini):
    write(mini, "p", "preset: p\ntrain:\n  weights: {a: 3}\n")
    assert merge_preset("p")[1]["train"]["weights"] == {"a": 3}


def test_comment_lines_above_a_section_and_a_comment_only_change(mini):
    write(mini, "p", "preset: p\n"
                     "# p's note on train\n"
                     "train:\n"
                     "  epochs: 6           # p: the same 6 epochs, explained\n"
                     "                      # on two lines\n")
    text, params = merge_preset("p")
    assert text.startswith("# header of base\npreset: p\n")   # no header of its own: base's
    assert "\n\n# p's note on train\ntrain:                # dense training\n" in text
    assert "  epochs: 6           # p: the same 6 epochs, explained\n                      # on two lines\n" in text
    assert "(40 pairs)" not in text and params["train"]["epochs"] == 6


def test_a_model_of_another_arch_replaces_the_section_and_the_same_arch_merges(mini):
    write(mini, "two", "preset: two\nmodel:\n  arch: two\n  heads: 4\n")
    write(mini, "wide", "preset: wide\nmodel:\n  width: 64\n")
    assert merge_preset("two")[1]["model"] == {"arch": "two", "heads": 4}
    assert merge_preset("two")[0].endswith("model:                # the architecture\n  arch: two\n  heads: 4\n")
    assert merge_preset("wide")[1]["model"] == {"arch": "one", "width": 64, "depth": 2}


def test_extends_chains_and_refuses_a_cycle(mini):
    write(mini, "a", "# header of a\npreset: a\nseed: 2\ntrain:\n  epochs: 9\n")
    write(mini, "b", "extends: a\npreset: b\ntrain:\n  lr: 0.1\n")
    write(mini, "c", "# header of c\nextends: b\npreset: c\nseed: 3\n")
    b_text, b = merge_preset("b")
    assert (b["seed"], b["train"]["epochs"], b["train"]["lr"], b["preset"]) == (2, 9, 0.1, "b")
    assert b_text.startswith("# header of a\npreset: b\n") and "extends" not in b_text
    c_text, c = merge_preset("c")
    assert c_text.startswith("# header of c\npreset: c\nseed: 3\n") and c["train"]["epochs"] == 9
    assert preset_names() == {"a": None, "b": "a", "c": "b"}
    write(mini, "a", "extends: c\npreset: a\n")
    with pytest.raises(ConfigError, match=r"goes round in a circle \(presets/c.yaml -> presets/b.yaml -> "
                                          r"presets/a.yaml -> presets/c.yaml\)"):
        merge_preset("c")


def test_a_path_outside_presets_changes_the_repositorys_base(mini, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("preset: mine\nseed: 7\n")
    assert merge_preset(str(mine))[1]["seed"] == 7
    mine.write_text("seed: 7\n")
    with pytest.raises(ConfigError, match="mine.yaml: sets no `preset:` name"):
        merge_preset(str(mine))
    full = tmp_path / "full.yaml"   # a complete params file changes every value: it comes out as it is
    full.write_text((mini / "base.yaml").read_text().replace("preset: base", "preset: full"))
    assert merge_preset(str(full))[0] == full.read_text()


@pytest.mark.parametrize("line", ["  url: 'https://x/#anchor'  # quoted", "  url: https://x/#y", "  url: a#b   # c"])
def test_a_hash_inside_a_value_is_not_a_comment(mini, line):
    base = mini / "base.yaml"
    base.write_text(base.read_text() + "download:\n  url: none\n")
    write(mini, "p", f"preset: p\ndownload:\n{line}\n")
    assert merge_preset("p")[1]["download"]["url"] == yaml.safe_load(f"download:\n{line}\n")["download"]["url"]
