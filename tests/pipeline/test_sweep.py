"""The whole pipeline and a queued pruning sweep, as a user runs them, in a scratch git + DVC repo.

`dvc repro` runs all eight stages on a tiny demo config (prune.amount 0.3); `dvc exp run --queue
-S prune.amount=0.4,0.5` plus `dvc queue start -j 2` adds two sweep points, run at the same time by two workers in
DVC's temporary copies. Checked: the queued experiments log into the repository's own MLflow store (SQLite; not a
temporary copy's), at overlapping times, one run each (none lost or duplicated, no "database is locked"), tagged
with their DVC experiment names and with the measured sparsity of their ratios; the dense training ran once for all
points; and `effifusion report` builds a report holding them. Before the sweep, `dvc push` to a local remote and
`dvc pull` in a fresh clone give a workspace in which every stage is up to date (nothing to recompute).
(Two queued points on two workers keep the test within CI's time; the queue runs any number the same way.)
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from effifusion.core.config import read_params
from helpers import ROOT

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1"}
    for var in ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    return env


def _run(args: list[str], cwd: Path, timeout: int = 900) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def tiny_pipeline_params(params: dict) -> dict:
    params["corpus"]["demo"].update(train_speakers=["p226", "p239", "p287"], train_utterances_per_speaker=3,
                                    test_utterances_per_speaker=2, min_duration_s=1.0, max_duration_s=1.3,
                                    unseen_noise_duration_s=4.0)
    params["mix_unseen"].update(noises=params["mix_unseen"]["noises"][:2], snrs_db=[5.0, 0.0],
                                utterances_per_condition=1)  # 4 unseen mixtures: each evaluate scores 8 files
    params["model"].update(channels=8, num_tsblocks=1)
    params["discriminator"]["channels"] = 8
    params["train"].update(epochs=1, batch_size=1, val_every_steps=3, val_utterances=2)
    params["prune"].update(epochs=1, prune_every_steps=1)
    params["export"]["parity_lengths_s"] = [0.5, 1.1]
    params["evaluate"].update(num_spectrograms=1, rtf_seconds=0.5)
    params["runtime"].update(data_workers=1, checkpoint_every_steps=3, pesq_workers=0, device="cpu", evaluate_workers=1)
    params["mlflow"]["experiment"] = "sweep-test"
    return params


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "effifusion", "presets"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = tiny_pipeline_params(read_params(ROOT / "presets" / "demo.yaml"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run([str(VENV_BIN / "dvc"), "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init"], repo)
    return repo


def _wait_for_queue(repo: Path, timeout_s: float = 1200) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _run([str(VENV_BIN / "dvc"), "queue", "status"], repo)
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        time.sleep(5)
    raise AssertionError(f"queue did not finish in {timeout_s} s:\n{status}")


def test_repro_then_queued_sweep_logs_to_the_main_store_and_reports(repo):
    import mlflow

    dvc = str(VENV_BIN / "dvc")
    out = _run([dvc, "repro"], repo)
    assert re.findall(r"Running stage '([^']+)'", out) == [
        "download", "prepare", "mix_unseen", "train", "prune", "export", "evaluate_dense", "evaluate"]
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluation) >= {"dense", "pruned", "prune"}  # one entry per variant
    for s in ("test", "unseen"):
        dense, pruned = evaluation["dense"][s], evaluation["pruned"][s]
        assert dense["noisy"] == pruned["noisy"]
        assert dense["pytorch"]["pesq"] != pruned["pytorch"]["pesq"]  # other weights, other scores
        assert abs(dense["onnx"]["pesq"] - dense["pytorch"]["pesq"]) < 0.02
    summary_md = (repo / "reports" / "evaluate" / "summary.md").read_text()
    assert "| dense (PyTorch)" in summary_md and "| pruned (ONNX)" in summary_md
    assert "Data and pipelines are up to date" in _run([dvc, "status"], repo)
    # A forced rerun of training writes the same bytes (no run id or timing in models/dense): prune,
    # export and evaluate stay up to date instead of days of GPU time rerun for nothing. (The kept
    # checkpoint is finished, so this rerun trains no step; the rerun without it is in test_trainer.)
    forced = _run([dvc, "repro", "-s", "-f", "train"], repo)
    assert re.findall(r"Running stage '([^']+)'", forced) == ["train"]
    assert "Data and pipelines are up to date" in _run([dvc, "status"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "baseline"], repo)

    # A teammate: `dvc push` to a remote, then a fresh clone + `dvc pull` finds every stage up to date.
    remote = repo.parent / "dvc-remote"
    _run([dvc, "remote", "add", "-d", "local", str(remote)], repo)
    _run([dvc, "push"], repo)
    clone = repo.parent / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    _run([dvc, "remote", "add", "-d", "-f", "local", str(remote)], clone)
    _run([dvc, "pull"], clone)
    assert "Data and pipelines are up to date" in _run([dvc, "status"], clone)
    assert {"dense.onnx", "pruned.onnx"} <= {p.name for p in (clone / "models" / "onnx").iterdir()}

    _run([dvc, "exp", "run", "--queue", "-S", "prune.amount=0.4,0.5"], repo)
    _run([dvc, "queue", "start", "-j", "2"], repo)
    status = _wait_for_queue(repo)
    assert status.count("Success") == 2, status
    for task in re.findall(r"^([0-9a-f]{7})\s", status, re.M):
        log = _run([dvc, "queue", "logs", task], repo)
        assert "database is locked" not in log and "Traceback" not in log, log[-3000:]

    store = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id])
    prune_runs = [r for r in runs if r.data.tags.get("stage") == "prune"]
    by_amount = {float(r.data.params["prune.amount"]): r for r in prune_runs}
    assert len(prune_runs) == 3 and set(by_amount) == {0.3, 0.4, 0.5}  # one run per point
    queued = [by_amount[0.4], by_amount[0.5]]
    assert len({r.data.tags.get("dvc_exp") for r in queued} - {None}) == 2  # the queued experiments' names
    # the two workers ran at the same time (a run stays open from training to its end; export and evaluate
    # log into it again): both wrote to the SQLite store concurrently
    assert max(r.info.start_time for r in queued) < min(r.info.end_time for r in queued)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    prepared_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    for amount, run in by_amount.items():
        assert run.data.metrics["train/conv_sparsity"] == pytest.approx(amount, abs=2e-3)
        assert {"test/pesq", "export/onnx_zip_bytes"} <= set(run.data.metrics)  # export, evaluate logged here
        for data_input in run.inputs.dataset_inputs:  # the data DVC's hash names, also in the queued copy
            assert data_input.dataset.digest == prepared_md5
            assert {t.key: t.value for t in data_input.tags}["data_hash_source"] == "dvc.lock:prepare"
        assert len(run.inputs.dataset_inputs) == 2
        assert run.info.run_name.startswith(f"prune-{round(amount * 100)}%")
    train_runs = [r for r in runs if r.data.tags.get("stage") == "train"]
    # the dense model was scored once, into the train run, by evaluate_dense: the sweep point reused it
    assert len(client.get_metric_history(train_runs[0].info.run_id, "test/pesq")) == 1
    assert train_runs[0].data.metrics["test/pesq"] == pytest.approx(evaluation["dense"]["test"]["pytorch"]["pesq"])
    # one: the forced rerun continued the finished checkpoint into the same run (retraining from
    # scratch writes the same bytes too: tests/training/test_trainer.py), and the sweep reused the
    # dense model instead of retraining it
    assert len(train_runs) == 1
    assert {r.data.tags["dense_run_id"] for r in prune_runs} == {train_runs[0].info.run_id}
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing logged into a temporary copy

    exp_show = json.loads(_run([dvc, "exp", "show", "--json"], repo))
    shown = set()

    def collect(node):  # every params.yaml prune.amount that `dvc exp show` lists
        if isinstance(node, dict):
            if isinstance(node.get("prune"), dict) and "amount" in node["prune"]:
                shown.add(node["prune"]["amount"])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(exp_show)
    assert shown >= {0.3, 0.4, 0.5}
    assert "evaluate.json" in json.dumps(exp_show)

    report_dir = repo / "reports" / "sweep"
    proc = subprocess.run([str(VENV_BIN / "effifusion"), "report", "--out", str(report_dir), "--register"], cwd=repo,
                          env={**_env(), "MLFLOW_TRACKING_URI": store}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["runs"] == 4  # the dense model (0 %), the workspace's own 0.3 and the queued ratios
    assert summary["registered"] == {"name": "effifusion-gan", "version": 1}
    version = client.get_model_version("effifusion-gan", "1")
    assert version.tags["source_run_id"] == summary["best"]["run_id"]
    rows = list(csv.DictReader((report_dir / "sweep.csv").open()))
    assert sorted(float(r["prune.amount"]) for r in rows) == [0.0, 0.3, 0.4, 0.5]
    assert [r["prune.method"] for r in rows].count("dense") == 1
    assert "| 0.3 |" in (report_dir / "sweep.md").read_text() and "| 0.5 |" in (report_dir / "sweep.md").read_text()
    for png in ("sweep_quality.png", "sweep_cost.png", "sweep_pareto.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
