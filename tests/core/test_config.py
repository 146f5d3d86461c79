"""params.yaml, presets, the stage error wrapper and where MLflow logs."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from effifusion.cli import main as cli_main
from effifusion.core.config import ConfigError, apply_preset, flatten, load_params, params_hash
from effifusion.tracking import runs as tracking
from helpers import ROOT, stage_command


def test_presets_and_params_have_the_same_keys():
    """Outside ``model`` every preset has params.yaml's keys; ``model`` has its architecture's keys."""
    from effifusion.models.registry import model_class

    def outside_model(params: dict) -> set[str]:
        return {k for k in flatten(params) if not k.startswith("model.")}

    keys = outside_model(load_params(ROOT / "params.yaml"))
    for preset in (ROOT / "presets").glob("*.yaml"):
        params = load_params(preset)
        assert outside_model(params) == keys, preset.name
        model = params["model"]
        assert model_class(model["arch"]).check_config(model).to_dict() == model, preset.name


@pytest.mark.parametrize("path", sorted((ROOT / "presets").glob("*.yaml")) + [ROOT / "params.yaml"],
                         ids=lambda p: p.name)
def test_every_params_file_reads_in_dvc(path):
    """DVC reads params with ruamel.yaml, which refuses duplicate keys that PyYAML lets pass: the preset
    files, and the complete params.yaml each preset writes (the file DVC reads)."""
    from ruamel.yaml import YAML

    from effifusion.core.config import merge_preset

    ruamel = YAML(typ="safe", pure=True)
    params = ruamel.load(path.read_text())
    assert params["preset"] == ("demo" if path.name == "params.yaml" else path.stem)
    if path.parent.name == "presets" and path.stem != "base":
        text, merged = merge_preset(path.stem)
        assert ruamel.load(text) == merged and merged["preset"] == path.stem


def test_paper_preset_is_the_paper_setup():
    paper = load_params(ROOT / "presets" / "paper.yaml")
    assert paper["corpus"]["name"] == "voicebank_demand"
    assert paper["model"]["channels"] == 64 and paper["model"]["num_tsblocks"] == 4
    assert paper["train"]["segment_s"] == 2.0 and paper["train"]["batch_size"] == 4
    assert paper["prepare"]["val_speakers"] == ["p226", "p287"]


def test_every_stage_param_section_exists():
    params = load_params(ROOT / "params.yaml")
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        for p in stage.get("params", []):
            node = params
            for part in p.split("."):
                assert part in node, f"stage {name}: param {p} not in params.yaml"
                node = node[part]


def test_apply_preset_writes_the_merged_file_and_refuses_unknown(tmp_path, monkeypatch, capsys):
    from effifusion.core.config import merge_preset

    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert cli_main(["preset", "paper"]) == 0
    assert (tmp_path / "params.yaml").read_text() == merge_preset("paper")[0]
    assert load_params(tmp_path / "params.yaml")["preset"] == "paper"
    assert "preset 'paper'" in capsys.readouterr().out
    assert cli_main(["preset", "nonexistent"]) == 2
    available = ", ".join(sorted(p.stem for p in (ROOT / "presets").glob("*.yaml") if p.stem != "base"))
    assert {"demo", "paper", "saf", "saf-demo"} <= set(available.split(", "))
    assert f"not found (available: {available})" in capsys.readouterr().err
    assert cli_main(["preset", "saf-demo"]) == 0  # another architecture, with its own model keys
    assert "preset 'saf-demo' (corpus demo, arch saf, C=32)" in capsys.readouterr().out
    assert cli_main(["preset", "demo"]) == 0
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: bad\naudio:\n  sample_rate: 0\n")
    with pytest.raises(ConfigError, match=r"^bad.yaml: audio.sample_rate: 0 is not valid"):
        apply_preset(str(bad))


def test_params_hash_is_stable_and_sensitive():
    p = load_params(ROOT / "params.yaml")
    assert params_hash(p) == params_hash(yaml.safe_load(yaml.safe_dump(p)))
    p["prune"]["amount"] = 0.41
    assert params_hash(p) != params_hash(load_params(ROOT / "params.yaml"))


def test_tracking_uri_is_anchored_at_dvc_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(ROOT)  # a queued experiment's cwd is a temporary copy, not the root
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"


def test_concurrent_first_use_creates_one_store(tmp_path):
    """Several processes creating the store at once (queued experiments) must not race."""
    code = (
        "import os, sys; os.environ['DVC_ROOT'] = sys.argv[1]; os.environ.pop('MLFLOW_TRACKING_URI', None)\n"
        "from effifusion.tracking import runs as tracking; print(tracking.setup('race'))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    ids = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(ids) == 1  # the same experiment for all three


def test_stage_error_is_one_line_and_exit_2(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["corpus"]["name"] = "nope"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(stage_command("download"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "stage download: error: params.yaml corpus.name: 'nope' is not valid (one of demo, voicebank_demand)"]
