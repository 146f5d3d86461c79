"""The data half of the DVC pipeline (download -> prepare -> mix_unseen) run by `dvc repro` in a scratch repo.

Checks what users rely on: the stages run from params.yaml, a second `dvc repro` runs nothing, and
changing one stage's params re-runs that stage only. The scratch repo gets copies of dvc.yaml,
params.yaml, stages/ and effifusion/ (the stages' declared deps); the code itself is imported from
the editable install.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
STAGES = ["download", "prepare", "mix_unseen"]


def _run(args: list[str], cwd: Path) -> str:
    path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"}
    env.pop("DVC_ROOT", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def _stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    if not (ROOT / "stages" / "download.py").is_file():
        pytest.skip("stages/download.py is not there yet")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "effifusion"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["corpus"]["name"] = "demo"
    params["corpus"]["demo"].update(train_utterances_per_speaker=2, test_utterances_per_speaker=3,
                                    min_duration_s=1.0, max_duration_s=1.5, unseen_noise_duration_s=5.0)
    params["mix_unseen"].update(utterances_per_condition=1)
    params["runtime"]["data_workers"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run([str(VENV_BIN / "dvc"), "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "init"],
         repo)
    return repo


def test_dvc_repro_runs_the_data_stages_once_and_reruns_only_what_changed(repo):
    dvc = str(VENV_BIN / "dvc")
    first = _run([dvc, "repro", *STAGES], repo)
    assert _stages_run(first) == STAGES

    corpus = json.loads((repo / "data/raw/corpus.json").read_text())
    assert corpus["name"] == "demo" and corpus["counts"]["train"] == 12 and corpus["counts"]["test"] == 6
    report = json.loads((repo / "data/prepared/report.json").read_text())
    assert report["counts"] == {"train": 8, "val": 4, "test": 6}
    assert json.loads((repo / "metrics/prepare.json").read_text())["files_per_s"] > 0
    rows = list(csv.DictReader((repo / "data/unseen/unseen.csv").open()))
    assert len(rows) == 5 * 6 and all((repo / "data/unseen" / r["clean"]).is_file() for r in rows)

    second = _run([dvc, "repro", *STAGES], repo)
    assert _stages_run(second) == []
    assert all(f"Stage '{s}' didn't change" in second for s in STAGES), second

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mix_unseen"]["snrs_db"] = [5.0, -5.0]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([dvc, "repro", *STAGES], repo)
    assert _stages_run(third) == ["mix_unseen"]
    rows = list(csv.DictReader((repo / "data/unseen/unseen.csv").open()))
    assert sorted({float(r["snr_db"]) for r in rows}) == [-5.0, 5.0] and len(rows) == 5 * 2
    assert "Data and pipelines are up to date" in _run([dvc, "status", *STAGES], repo)

    # A forced rerun on the same inputs writes the same bytes: nothing downstream goes stale.
    forced = _run([dvc, "repro", "-s", "-f", "prepare"], repo)
    assert _stages_run(forced) == ["prepare"]
    assert "Data and pipelines are up to date" in _run([dvc, "status", *STAGES], repo)
