"""`effifusion ui`: MLflow's UI on the project's store, opened on this project's runs.

MLflow 3's UI has two workflow types, GenAI (traces, token usage) and machine learning (runs,
metrics, models). The type is a browser setting (local storage) that defaults to GenAI, whatever the
experiment's ``mlflow.experimentKind`` tag says; a ``workflowType`` parameter in the page's URL
overrides it. So the URL printed here is the experiment page with ``?workflowType=machine_learning``
(the route MLflow's own switch navigates to: ``#/experiments/<id>?workflowType=...``); it opens on
the runs and keeps the parameter while one moves between the experiment's tabs.

The store is the one the pipeline logs to (``tracking.runs.tracking_uri``). A local store (SQLite by
default) gets a ``mlflow server`` started here on it, until Ctrl-C; a remote tracking server
(``MLFLOW_TRACKING_URI=http...``) already serves the UI, so only its URL is printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from effifusion.core.config import read_params, repo_root
from effifusion.core.errors import ConfigError, TrackingError
from effifusion.tracking import runs as tracking

WORKFLOW = "machine_learning"  # MLflow 3's UI: runs, charts, models (the other type is "genai")
START_TIMEOUT_S = 120.0


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The UI page that lists ``experiment_id``'s runs (machine-learning view) on the server at ``base_url``."""
    return f"{base_url.rstrip('/')}/#/experiments/{quote(str(experiment_id))}?workflowType={WORKFLOW}"


def experiment_name(experiment: str | None, params_path: str | os.PathLike | None = None) -> str:
    """``experiment``, else params.yaml's ``mlflow.experiment``."""
    if experiment:
        return experiment
    path = Path(params_path) if params_path else repo_root() / "params.yaml"
    name = (read_params(path).get("mlflow") or {}).get("experiment")
    if not name:
        raise ConfigError(f"{path}: no mlflow.experiment setting (or pass --experiment NAME)")
    return str(name)


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def server_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow server`` on the local store ``uri`` (artifacts: the repository's mlartifacts folder)."""
    artifacts = tracking.artifact_root()
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root",
            artifacts, "--artifacts-destination", artifacts, "--host", host, "--port", str(port), "--workers", "1"]


def wait_until_up(base_url: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S) -> None:
    """Return once ``base_url/health`` answers; TrackingError if the server exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(f"mlflow server exited with code {proc.returncode} before answering at {base_url} "
                                "(is the port taken? its messages are above)")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TrackingError(f"mlflow server did not answer at {base_url} within {timeout_s:.0f} s")


def _browser_host(host: str) -> str:
    """The host a browser on this machine uses for a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def ui(host: str = "127.0.0.1", port: int = 5000, experiment: str | None = None, print_url_only: bool = False,
       params_path: str | os.PathLike | None = None) -> int:
    """Print the URL of the experiment's runs and, for a local store, serve the UI until interrupted.

    Returns the exit code (0; the server's own code if it stops by itself).
    """
    name = experiment_name(experiment, params_path)
    uri = tracking.tracking_uri()
    exp_id = tracking.setup(name)  # creates the store and experiment if new, one-line TrackingError if unreachable
    if is_remote(uri):
        print(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) serves the UI; experiment {name!r}:")
        print(experiment_url(uri, exp_id))
        return 0
    base = f"http://{_browser_host(host)}:{port}"
    url = experiment_url(base, exp_id)
    if print_url_only:
        print(url)
        return 0
    cmd = server_command(uri, host, port)
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: stopped with all its workers below
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` of this process stops the server too
    try:
        wait_until_up(base, proc)
        print(f"MLflow UI on {uri}, experiment {name!r} (Ctrl-C stops it):", flush=True)
        print(url, flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
