"""The two training stages as functions of params: what stages/train.py and stages/prune.py run.

Both are the same trainer (training/trainer.py); they differ in schedule, starting weights and
callbacks only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from effifusion.training.callbacks import PruningCallback
from effifusion.training.trainer import Schedule, fit


def train_dense(params: dict[str, Any], **paths_and_options: Any) -> dict[str, Any]:
    """The train stage: from scratch on the ``train`` schedule."""
    return fit(params, "train", Schedule.from_config(params["train"]), **paths_and_options)


def prune_finetune(params: dict[str, Any], init_dir: Path, **paths_and_options: Any) -> dict[str, Any]:
    """The prune stage: from the dense checkpoint in ``init_dir`` on the ``prune`` schedule, pruning on."""
    return fit(params, "prune", Schedule.from_config(params["prune"]), init_dir=init_dir,
               callbacks=[PruningCallback(params["prune"])], **paths_and_options)
