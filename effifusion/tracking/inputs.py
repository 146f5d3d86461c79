"""The data a run trained on, as MLflow dataset inputs carrying DVC's hash of it.

A training run logs its manifests (``train.csv`` as context "training", ``val.csv`` as
"validation") with ``mlflow.log_input``; the dataset digest is the md5 that dvc.lock records for
the prepared-data folder, the hash ``dvc checkout`` / ``dvc exp apply`` restores those exact files
by, so a run names the data it saw. Reading dvc.lock is free, whereas re-hashing the audio would
cost as much as DVC's own status check; outside a DVC repository (tests, a folder copied by hand)
the digest is an md5 of the manifest files instead, and the input's ``data_hash_source`` tag
says which one it is.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

SPLITS = {"train": "training", "val": "validation"}  # manifest -> MLflow input context
MANIFESTS = ("train.csv", "val.csv", "test.csv")  # what the fallback hash covers
LOCK_FILE = "dvc.lock"
MAX_DIGEST = 36  # MLflow's limit on a dataset digest: DVC's "<md5>.dir" just fits; the tag keeps it whole


def locked_md5(data_dir: Path) -> tuple[str, str] | None:
    """(md5, stage) that the nearest dvc.lock above ``data_dir`` records for it as a stage output, else None.

    None as well when that dvc.lock cannot be read or does not list the folder (it was never produced
    by the pipeline); the nearest lock is the repository's own, also in a queued experiment's copy.
    """
    import yaml

    data_dir = Path(data_dir).resolve()
    lock = next((d / LOCK_FILE for d in data_dir.parents if (d / LOCK_FILE).is_file()), None)
    if lock is None:
        return None
    rel = data_dir.relative_to(lock.parent).as_posix()
    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
        for name, stage in stages.items():
            for out in stage.get("outs") or []:
                if out.get("path") == rel and out.get("md5"):
                    return str(out["md5"]), name
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return None


def manifests_md5(data_dir: Path) -> str:
    """md5 over the manifest files present in ``data_dir`` (name and bytes, in a fixed order)."""
    h = hashlib.md5()
    for name in MANIFESTS:
        path = Path(data_dir) / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def data_hash(data_dir: Path) -> tuple[str, str]:
    """(hash, where it comes from): dvc.lock's md5 of ``data_dir`` if recorded, else the manifests' md5."""
    locked = locked_md5(data_dir)
    if locked is not None:
        return locked[0], f"{LOCK_FILE}:{locked[1]}"
    return manifests_md5(data_dir), "manifests"


def log_data_inputs(data_dir: Path) -> str:
    """Log ``data_dir``'s train and val manifests as inputs of the active run; return the hash logged."""
    import mlflow
    import mlflow.data
    import pandas as pd

    data_dir = Path(data_dir)
    digest, source = data_hash(data_dir)
    for split, context in SPLITS.items():
        manifest = data_dir / f"{split}.csv"
        if not manifest.is_file():
            continue
        with warnings.catch_warnings():  # MLflow's chatter: its two equal local-file sources, a serving hint
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted", UserWarning)
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
            dataset: Any = mlflow.data.from_pandas(pd.read_csv(manifest), source=str(manifest.resolve()),
                                                   name=f"{data_dir.name}/{manifest.name}",
                                                   digest=digest[:MAX_DIGEST])
            mlflow.log_input(dataset, context=context, tags={"data_hash": digest, "data_hash_source": source})
    return digest
