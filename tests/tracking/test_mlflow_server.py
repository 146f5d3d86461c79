"""A training run logged to a real ``mlflow server``, as a team shares one: REST tracking, proxied artifacts.

The other MLflow tests write to a SQLite file in-process; here every call goes over HTTP to a server
started for the test (SQLite behind it, artifacts proxied through it with ``--artifacts-destination``,
so the client never sees the artifact folder), and everything is read back through ``MlflowClient``:
the run, its sectioned metrics, the checkpoint downloaded over HTTP, the dataset inputs with dvc.lock's
hash, and the experiment's model-training kind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from effifusion.tracking import runs as tracking
from effifusion.training.stages import train_dense
from helpers import make_prepared, tiny_params

DIR_MD5 = "5f2b0c3e9a4d4e6f8a1b2c3d4e5f6a7b.dir"  # what dvc.lock says data/prepared is


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {url} did not answer in {timeout_s} s")


@pytest.fixture
def server(tmp_path: Path):
    """``mlflow server`` on a free localhost port; yields its URL, stopped afterwards."""
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_until_up(url, proc)
        except AssertionError as exc:
            log.flush()
            raise AssertionError(f"{exc}:\n{(tmp_path / 'server.log').read_text()[-3000:]}") from None
        yield url
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """End the server and its uvicorn worker: the process group it leads (started for it), by its id."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    proc.wait()


def test_training_logs_to_a_tracking_server(server, tmp_path, monkeypatch):
    import mlflow

    repo = tmp_path / "repo"  # a DVC-like checkout: dvc.lock records data/prepared's hash
    make_prepared(repo / "data" / "prepared")
    lock = {"schema": "2.0", "stages": {"prepare": {"cmd": "python stages/prepare.py", "outs": [
        {"path": "data/prepared", "hash": "md5", "md5": DIR_MD5, "size": 1, "nfiles": 1}]}}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # restored afterwards

    out = repo / "models" / "dense"
    train_dense(tiny_params(train__epochs=1), prepared_dir=Path("data/prepared"), out_dir=out,
                metrics_path=repo / "metrics" / "train.json", plots_dir=repo / "plots", resume_dir=repo / "ck")

    client = mlflow.MlflowClient(server)
    found = tracking.find_model_run(out / "model.pt", tiny_params()["mlflow"]["experiment"])
    run = client.get_run(found.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "train"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: the client writes over HTTP only

    assert len(client.get_metric_history(run.info.run_id, "train/g_total")) >= 4  # a curve, one point a step
    assert {"val/pesq", "train/d_loss", "train/lr", "train/steps_per_s"} <= set(run.data.metrics)
    assert all("/" in name for name in run.data.metrics)

    got = Path(client.download_artifacts(run.info.run_id, "checkpoint/model.pt", str(tmp_path / "dl")))
    assert got.read_bytes() == (out / "model.pt").read_bytes()

    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"prepared/train.csv", "prepared/val.csv"}
    for name, context in (("prepared/train.csv", "training"), ("prepared/val.csv", "validation")):
        tags = {t.key: t.value for t in inputs[name].tags}
        assert inputs[name].dataset.digest == DIR_MD5
        assert tags == {"mlflow.data.context": context, "data_hash": DIR_MD5, "data_hash_source": "dvc.lock:prepare"}

    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "test"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
