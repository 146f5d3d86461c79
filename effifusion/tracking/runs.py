"""MLflow tracking: one store per repository, one run per trained model, shared by later stages.

The store is ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/mlflow.db`` with artifacts in
``<repo>/mlartifacts``. ``<repo>`` comes from ``DVC_ROOT``, which DVC sets to the real repository
even in queued experiments that run in temporary copies under ``.dvc/tmp/exps`` — so every
experiment of a sweep logs into the same store. Creating a fresh SQLite store races when several
processes start at once (docs/reference.md §8), so creation happens under a file lock.

Failures are quick and one line: an HTTP tracking server is probed first (5 s), and MLflow's own
HTTP retries are cut from 7 retries × 120 s timeouts (about 4 minutes against a dead host) to 2 ×
15 s unless ``MLFLOW_HTTP_REQUEST_*`` are set. The repository's own store keeps its artifact root
relative in spirit: MLflow stores absolute ``file://`` paths, so a moved or copied repository has
its store's paths rewritten to the new location (else it would write into the original one). A
stage killed with SIGKILL cannot close its run; runs record host and pid, and the next set-up
marks RUNNING runs whose process is gone as KILLED.

The experiment's ``mlflow.experimentKind`` tag says it is model training (``custom_model_development``,
shown as "Machine learning"). The tag is set when the experiment is created, and added to an existing
experiment that has no kind yet (one chosen by hand is left alone). It does not choose the page MLflow
3's UI opens on: that is the UI's workflow type, a browser setting that defaults to GenAI; the URL
``effifusion ui`` prints (tracking/ui.py) carries ``?workflowType=machine_learning`` and opens on the runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from effifusion.core.config import flatten, params_hash, repo_root
from effifusion.core.errors import TrackingError
from effifusion.core.files import pid_alive

MODEL_TAG = "model_md5"  # md5 of the checkpoint a run wrote: later stages find the run by it
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3's UI (values: genai_development, ...)
EXPERIMENT_KIND = "custom_model_development"  # model training ("Machine learning" in the UI)
PROBE_TIMEOUT_S = 5.0
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# (table, column) of the SQL store that hold artifact locations (absolute file:// URIs)
ARTIFACT_COLUMNS = [("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "storage_location"),
                    ("model_versions", "source")]


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (repo_root() / "mlartifacts").as_uri()


def setup(experiment: str) -> str:
    """Point MLflow at the store, create store and experiment once (under a lock); return its id.

    TrackingError (one line) if the store cannot be reached or refuses the request.
    """
    import mlflow
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    local_db = _local_sqlite(uri)
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        probe_server(uri)
    mlflow.set_tracking_uri(uri)
    lock = FileLock(str(repo_root() / ".mlflow.lock")) if uri.startswith("sqlite:") else _NullLock()
    try:
        with lock:
            if local_db is not None and local_db.is_file():
                relocate_artifacts(local_db, artifact_root())
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                location = artifact_root() if uri.startswith("sqlite:") else None
                exp_id = mlflow.create_experiment(experiment, artifact_location=location,
                                                  tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            else:
                exp_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # made before this tag, or by another tool
                    mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        mlflow.set_experiment(experiment_id=exp_id)
        close_dead_runs(exp_id)
    except MlflowException as exc:
        raise TrackingError(f"MLflow store {uri}: {_first_line(exc)}") from None
    return exp_id


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in seconds, not minutes, when an HTTP tracking server does not answer.

    Any HTTP answer (even an error status) means a server is there; only a refused connection, a
    name that does not resolve or silence until ``timeout`` fail.
    """
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {uri} is not reachable ({reason}); start it "
                            f"(mlflow server ...) or unset MLFLOW_TRACKING_URI to use the repository's "
                            f"own store") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _local_sqlite(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def relocate_artifacts(db: Path, root: str) -> None:
    """Rewrite the store's artifact paths if the repository was moved or copied.

    Experiments made by ``setup`` have ``<repo>/mlartifacts`` as their artifact location, and MLflow
    stores it absolute; after ``mv``/``cp -r`` of the repository the store would still point at the
    old place. Paths under an old ``.../mlartifacts`` root are rewritten to ``root`` in every table
    that holds artifact locations (said in one line on stderr). Other locations are left alone.
    """
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return
        old_roots = {loc for (loc,) in con.execute("SELECT artifact_location FROM experiments")
                     if loc and loc.startswith("file://") and loc.rstrip("/").endswith("/mlartifacts")
                     and loc.rstrip("/") != root.rstrip("/")}
        for old in old_roots:
            old = old.rstrip("/")
            for table, column in ARTIFACT_COLUMNS:
                if table not in tables or column not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                    continue
                con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                            (root.rstrip("/"), len(old) + 1, old, len(old) + 1, old + "/"))
            print(f"mlflow: artifact paths of {db} moved from {old} to {root} (the repository was moved or "
                  f"copied)", file=sys.stderr)


def process_tags() -> dict[str, str]:
    """Where a run's process lives: lets a later set-up tell a killed run from a live one."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def close_dead_runs(exp_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this experiment whose process (same host, by pid) is gone.

    A stage killed with SIGKILL (or the machine's OOM killer) never ends its run; without this it
    would show as running forever. Runs from other hosts, or without a pid, are left alone.
    """
    import mlflow

    client = mlflow.MlflowClient()
    running = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    closed = []
    for run in running:
        tags = run.data.tags
        if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
            continue
        if not pid_alive(int(tags["pid"])):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run_tags(stage: str, params: dict[str, Any]) -> dict[str, str]:
    """Tags that tie a run to its code, config and DVC experiment."""
    tags = {"stage": stage, "params_hash": params_hash(params), "preset": str(params.get("preset", ""))}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def git_commit() -> str | None:
    """HEAD of the working copy (in a queued DVC experiment: the experiment's own commit)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def run_name(stage: str, params: dict[str, Any]) -> str:
    """Readable names: ``prune-30%-exp-name`` / ``train-C64x4``."""
    m = params["model"]
    if m["arch"] == "effifusion_gan":  # width x TS-Conformer blocks
        shape = f"C{m['channels']}x{m['num_tsblocks']}"
    else:  # other architectures: their name and width
        shape = m["arch"] + (f"-C{m['channels']}" if "channels" in m else "")
    name = f"{stage}-{shape}"
    if stage == "prune":
        name = f"prune-{round(100 * params['prune']['amount'])}%-{shape}"
    if os.environ.get("DVC_EXP_NAME"):
        name += f"-{os.environ['DVC_EXP_NAME']}"
    return name


@contextmanager
def start_run(stage: str, params: dict[str, Any], run_id: str | None = None,
              extra_tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start (or, with ``run_id``, resume) the stage's run with all params and tags logged."""
    import mlflow

    setup(params["mlflow"]["experiment"])
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            mlflow.set_tags(process_tags())  # the resuming process now owns the run
            yield run
        return
    with mlflow.start_run(run_name=run_name(stage, params)) as run:
        mlflow.set_tags({**run_tags(stage, params), **process_tags(), **(extra_tags or {})})
        flat = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(items[i:i + 100]))
        yield run


def model_md5(path: str | os.PathLike) -> str:
    """md5 of a model file (DVC's hash function): the key that ties a model to the run that made it."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tag_model(path: str | os.PathLike) -> None:
    """Tag the active run with the md5 of the model file it wrote (read back by ``find_model_run``).

    The link lives in MLflow, not in the stage's output folder: an output that recorded its run id
    would differ on every rerun and make every later stage stale for nothing.
    """
    import mlflow

    mlflow.set_tag(MODEL_TAG, model_md5(path))


def find_model_run(path: str | os.PathLike, experiment: str) -> Any | None:
    """The first run of ``experiment`` tagged with this model file's md5, or None.

    A forced rerun that writes the same bytes made the same model: later stages keep logging into,
    and a sweep keeps grouping under, the run that made it first.
    """
    import mlflow

    exp_id = setup(experiment)
    found = mlflow.search_runs(experiment_ids=[exp_id], filter_string=f"tags.{MODEL_TAG} = '{model_md5(path)}'",
                               order_by=["attributes.start_time ASC"], max_results=1, output_format="list")
    return found[0] if found else None


@contextmanager
def resume_run(model_path: Path, params: dict[str, Any], stage: str) -> Iterator[Any]:
    """Log into the run that produced ``model_path`` (export and evaluate after the prune stage).

    The run is found by the md5 of the model file (``tag_model``). If no run in this store has it
    (the store was moved or deleted, or the model came from elsewhere), a new run is started and
    tagged with the md5, so results are never dropped.
    """
    import mlflow

    run = find_model_run(model_path, params["mlflow"]["experiment"])
    if run is None:
        tags = {MODEL_TAG: model_md5(model_path), "training_run": "not in this store"}
        with start_run(stage, params, extra_tags=tags) as new:
            yield new
        return
    with mlflow.start_run(run_id=run.info.run_id) as resumed:
        mlflow.set_tags(process_tags())
        yield resumed
