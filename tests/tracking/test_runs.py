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


def test_a_moved_repository_gets_its_artifact_paths_rewritten(tmp_path, monkeypatch, capsys):
    """MLflow stores artifact locations as absolute paths; after `mv repo elsewhere` the store must
    not keep writing into (or reading from) the old place."""
    import shutil

    previous = mlflow.get_tracking_uri()
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    for root in (old, new):
        if root == new:
            shutil.copytree(old, new)
        monkeypatch.setenv("DVC_ROOT", str(root))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        params = {"mlflow": {"experiment": "moved"},
                  "model": {"arch": "effifusion_gan", "channels": 4, "num_tsblocks": 1}}
        with tracking.start_run("train", params) as run:
            mlflow.log_text("hello", "note.txt")
        assert run.info.artifact_uri.startswith((root / "mlartifacts").as_uri() + "/")
        assert (root / "mlartifacts" / run.info.run_id / "artifacts" / "note.txt").is_file()
    assert "moved from" in capsys.readouterr().err
    client = mlflow.MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("moved").experiment_id])
    assert len(runs) == 2 and all(r.info.artifact_uri.startswith(new.as_uri() + "/") for r in runs)
    assert client.get_experiment_by_name("moved").artifact_location == (new / "mlartifacts").as_uri()
    mlflow.set_tracking_uri(previous)


def test_a_run_whose_process_was_killed_is_closed_by_the_next_setup(store, tmp_path):
    """SIGKILL leaves no chance to end a run; the next set-up sees its pid gone and marks it KILLED."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, time
        from effifusion.tracking import runs as tracking
        with tracking.start_run("train", {"mlflow": {"experiment": "killed"},
                                          "model": {"arch": "effifusion_gan", "channels": 4,
                                                    "num_tsblocks": 1}}) as run:
            print(run.info.run_id, flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ)
    run_id = proc.stdout.readline().strip()
    assert store.get_run(run_id).info.status == "RUNNING"
    exp_id = tracking.setup("killed")  # the process is alive: left alone
    assert store.get_run(run_id).info.status == "RUNNING"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tracking.setup("killed") == exp_id
    assert store.get_run(run_id).info.status == "KILLED"


def test_an_unreachable_tracking_server_fails_fast_in_one_line(tmp_path):
    """Before: `effifusion report` hung 248 s (MLflow's retries), then printed a traceback."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "DVC_ROOT": str(tmp_path)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "effifusion.cli", "report", "--experiment", "x",
                           "--out", str(tmp_path / "sweep")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2 and elapsed < 30, (elapsed, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not reachable" in lines[0] and f"127.0.0.1:{port}" in lines[0], proc.stderr


def test_mlflow_errors_are_one_line_for_stages_and_the_cli():
    from mlflow.exceptions import MlflowException

    from effifusion.core.errors import DataError, user_message

    assert user_message(MlflowException("RESOURCE_DOES_NOT_EXIST: run x\nmore")) == \
        "MLflow: RESOURCE_DOES_NOT_EXIST: run x"
    assert user_message(DataError("a.wav: bad")) == "a.wav: bad"
    assert user_message(ZeroDivisionError()) is None  # a bug keeps its traceback
