"""The two training stages as functions of params: what stages/train.py and stages/prune.py run.

Both are the same trainer (training/trainer.py); they differ in schedule, starting weights and
callbacks only. ``prune.method`` picks the prune stage's callback; ``none`` skips the trainer: the
dense model passes through unchanged (the peers' papers report unpruned models), so the sweep
machinery still finds a ``models/pruned`` and evaluate scores it without a fine-tune.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from effifusion.core.files import atomic_dir, write_csv, write_json
from effifusion.core.settings import Params, PruneConfig, as_settings
from effifusion.training.callbacks import Callback, PruningCallback
from effifusion.training.trainer import Schedule, fit

PASS_THROUGH = "none"


def train_dense(params: Params | dict[str, Any], **paths_and_options: Any) -> dict[str, Any]:
    """The train stage: from scratch on the ``train`` schedule (``params``: typed, or the mapping, checked here)."""
    params = as_settings(params)
    return fit(params, "train", Schedule.from_config(params.train), **paths_and_options)


def pruning_callback(prune: PruneConfig) -> Callback:
    """The callback that prunes by ``prune.method`` (l1_unstructured; channel: training/channel_pruning.py)."""
    if prune.method == "channel":
        from effifusion.training.channel_pruning import ChannelPruningCallback

        return ChannelPruningCallback(prune)
    return PruningCallback(prune)


def prune_finetune(params: Params | dict[str, Any], init_dir: Path, *, out_dir: Path, metrics_path: Path,
                   plots_dir: Path, **paths_and_options: Any) -> dict[str, Any]:
    """The prune stage: from the dense checkpoint in ``init_dir`` on the ``prune`` schedule, pruning on;
    ``prune.method: none`` copies the dense model instead (no fine-tune, no MLflow run). ``params``: the
    typed Params, or params.yaml's mapping (checked here)."""
    params = as_settings(params)
    prune = params.prune
    if prune.method == PASS_THROUGH:
        return pass_through(init_dir, out_dir=out_dir, metrics_path=metrics_path, plots_dir=plots_dir)
    return fit(params, "prune", Schedule.from_config(prune), init_dir=init_dir,
               callbacks=[pruning_callback(prune)], out_dir=out_dir, metrics_path=metrics_path,
               plots_dir=plots_dir, **paths_and_options)


def pass_through(init_dir: Path, *, out_dir: Path, metrics_path: Path, plots_dir: Path) -> dict[str, Any]:
    """``out_dir`` = a byte copy of ``init_dir`` (same md5: export and evaluate find the train run and reuse
    the dense export and scores); metrics say that nothing was pruned or trained."""
    from effifusion.models.registry import MODEL_FILE, load_checkpoint, model_file
    from effifusion.training.pruning import count_nonzero

    init_dir, out_dir = Path(init_dir), Path(out_dir)
    checkpoint = model_file(init_dir)
    model, extra = load_checkpoint(checkpoint)  # a one-line error when the dense model is unusable
    with atomic_dir(out_dir) as tmp:
        for f in sorted(init_dir.iterdir()):
            if f.is_file():  # an old folder's generator.pt is written under the current name
                shutil.copy2(f, tmp / (MODEL_FILE if f == checkpoint else f.name))
    nonzero, total = count_nonzero(model)
    metrics = {"method": PASS_THROUGH, "val_pesq": extra.get("val_pesq"), "best_step": 0, "steps": 0,
               "params_total": total, "params_nonzero": nonzero, "sparsity": 1.0 - nonzero / total,
               "conv_sparsity": 0.0, "note": f"prune.method none: {out_dir} is a copy of {init_dir}"}
    write_json(metrics_path, metrics)
    write_csv(plots_dir / "losses.csv", [], ["step"])
    write_csv(plots_dir / "val.csv", [{"step": 0, "val_pesq": extra.get("val_pesq")}])
    write_csv(plots_dir / "sparsity.csv", [{"step": 0, "sparsity": 0.0, "target": 0.0}])
    return metrics
