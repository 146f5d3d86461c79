"""`effifusion ui`: the URL that opens MLflow 3's UI on the experiment's runs, and a real server behind it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from effifusion import cli
from effifusion.tracking import runs as tracking
from effifusion.tracking import ui


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store in a folder of its own (the working directory), as MLFLOW_TRACKING_URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # restored afterwards
    # setup() makes the experiment active (a global and MLFLOW_EXPERIMENT_ID): undone after the test
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "unset")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    return uri


def test_experiment_url_opens_the_machine_learning_view():
    assert (ui.experiment_url("http://127.0.0.1:5000/", "7")
            == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning")


def test_the_route_is_the_one_mlflows_ui_knows():
    """The installed UI's bundle reads ``workflowType`` from the URL and routes /experiments/:experimentId."""
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    mains = list(bundle.glob("main.*.js"))
    if not mains:
        pytest.skip("this MLflow install ships no UI bundle")
    text = mains[0].read_text(errors="replace")
    assert 'get("workflowType")' in text and 'MACHINE_LEARNING="machine_learning"' in text
    assert '"/experiments/:experimentId"' in text


def test_print_url_only_names_the_experiment(store, capsys):
    assert cli.main(["ui", "--experiment", "ui-test", "--port", "5123", "--print-url-only"]) == 0
    url = capsys.readouterr().out.strip().splitlines()[-1]
    import mlflow

    exp_id = mlflow.get_experiment_by_name("ui-test").experiment_id
    assert url == f"http://127.0.0.1:5123/#/experiments/{exp_id}?workflowType=machine_learning"


def test_a_remote_tracking_server_is_pointed_to(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:8080")
    monkeypatch.setattr(tracking, "setup", lambda name: "42")  # the server's experiment id
    assert cli.main(["ui", "--experiment", "x"]) == 0
    out = capsys.readouterr().out
    assert "http://mlflow.example:8080/#/experiments/42?workflowType=machine_learning" in out.splitlines()


def test_a_missing_experiment_setting_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert cli.main(["ui", "--params", str(tmp_path / "params.yaml"), "--print-url-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("effifusion ui: error:") and "mlflow.experiment" in err and "\n" not in err


@pytest.mark.slow  # ~20 s for the server alone, 50 s in all on two busy cores
def test_ui_serves_the_experiment_page(store, tmp_path):
    """`effifusion ui` on 127.0.0.1: the printed URL answers 200 and its experiment exists; SIGTERM stops it all."""
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "effifusion"), "ui", "--experiment", "ui-test", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy())
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("http://"):
                url = line.strip()
        assert url is not None, f"no URL printed (exit code {proc.poll()})"
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and url.endswith(
            "?workflowType=machine_learning")
        exp_id = url.split("#/experiments/")[1].split("?")[0]
        with urllib.request.urlopen(url, timeout=10) as r:  # the fragment stays in the browser
            assert r.status == 200 and b"<html" in r.read(2000).lower()
        api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get?experiment_id={exp_id}"
        with urllib.request.urlopen(api, timeout=10) as r:
            experiment = json.load(r)["experiment"]
        assert experiment["name"] == "ui-test"
        assert {t["key"]: t["value"] for t in experiment["tags"]}[tracking.EXPERIMENT_KIND_TAG] == \
            tracking.EXPERIMENT_KIND
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    with socket.socket() as s:  # the server went with it
        assert s.connect_ex(("127.0.0.1", port)) != 0
