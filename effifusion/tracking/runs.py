"""MLflow tracking: one store per repository, one run per trained model, shared by later stages.

The store is ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo>/mlflow.db`` with artifacts in
``<repo>/mlartifacts``. ``<repo>`` comes from ``DVC_ROOT``, which DVC sets to the real repository
even in queued experiments that run in temporary copies under ``.dvc/tmp/exps`` — so every
experiment of a sweep logs into the same store. Creating a fresh SQLite store races when several
processes start at once (REFERENCE §8), so creation happens under a file lock.

MLflow 3's UI opens an experiment on its GenAI traces page unless the experiment's
``mlflow.experimentKind`` tag says otherwise; ``custom_model_development`` (shown as "Machine
learning") opens it on its runs. The tag is set when the experiment is created, and added to an
existing experiment that has no kind yet (one chosen by hand is left alone).
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from effifusion.core.files import write_json
from effifusion.core.config import flatten, params_hash, repo_root

RUN_REF = "mlflow_run.json"  # written into a stage's DVC output folder; later stages read it
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3's UI (values: genai_development, ...)
EXPERIMENT_KIND = "custom_model_development"  # model training: the UI opens on the runs


def tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (repo_root() / "mlartifacts").as_uri()


def setup(experiment: str) -> str:
    """Point MLflow at the store, create store and experiment once (under a lock); return its id."""
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    lock_path = repo_root() / ".mlflow.lock" if uri.startswith("sqlite:") else None
    lock = FileLock(str(lock_path)) if lock_path else _NullLock()
    with lock:
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
    return exp_id


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
    name = f"{stage}-C{m['channels']}x{m['num_tsblocks']}"
    if stage == "prune":
        name = f"prune-{round(100 * float(params['prune']['amount']))}%-C{m['channels']}x{m['num_tsblocks']}"
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
            yield run
        return
    with mlflow.start_run(run_name=run_name(stage, params)) as run:
        mlflow.set_tags({**run_tags(stage, params), **(extra_tags or {})})
        flat = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(items[i:i + 100]))
        yield run


@contextmanager
def resume_run(ref_dir: Path, params: dict[str, Any], stage: str) -> Iterator[Any]:
    """Log into the run recorded in ``ref_dir/mlflow_run.json`` (export, evaluate after training).

    If that run is not in this store (the store was moved or deleted), a new run is started and
    tagged with the missing id, so results are never dropped.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    ref = read_run_ref(ref_dir)
    setup(params["mlflow"]["experiment"])
    try:
        mlflow.get_run(ref["run_id"])
    except MlflowException:
        with start_run(stage, params, extra_tags={"missing_parent_run": ref["run_id"]}) as run:
            yield run
        return
    with mlflow.start_run(run_id=ref["run_id"]) as run:
        yield run


def write_run_ref(out_dir: Path, run: Any) -> None:
    ref = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": tracking_uri()}
    write_json(out_dir / RUN_REF, ref)


def read_run_ref(ref_dir: Path) -> dict[str, str]:
    from effifusion.core.errors import DataError

    path = Path(ref_dir) / RUN_REF
    if not path.is_file():
        raise DataError(f"{path}: missing MLflow run reference (run the training stages first)")
    return json.loads(path.read_text())
