"""MLflow metric names by section: ``train/…``, ``val/…``, ``test/…``, ``unseen/…``, ``rtf/…``, ``export/…``
(and ``sweep/…`` in the report's run, ``compare/…`` and ``bench/…`` in the compare run).

The MLflow UI makes one chart section per name prefix (the part before the first '/'), so a prune
run's ~90 metrics show as a few sections instead of one flat wall of charts. Only the MLflow names
carry sections: the DVC metrics files (metrics/*.json) and the CSVs under plots/ keep their flat
keys, which ``dvc metrics diff`` and ``dvc exp show`` compare across commits.
"""

from __future__ import annotations

import numbers
from typing import Any

TRAIN, VAL, RTF, EXPORT, SWEEP = "train", "val", "rtf", "export", "sweep"
COMPARE, BENCH = "compare", "bench"  # the `effifusion compare` run: its counts, its `effifusion bench` results
TEST, UNSEEN = "test", "unseen"  # the evaluate stage's sets (test/pesq, unseen/csig_published, ...)
VAL_PESQ = f"{VAL}/pesq"  # at each validation, then the selected weights' value at the run's last step
TEST_PESQ = "test/pesq"  # the evaluate stage's PyTorch PESQ on the test set
VALIDATION_KEYS = {"val_pesq": "pesq", "best_step": "best_step"}  # training metrics that belong under val/


def in_section(section: str, metrics: dict[str, Any]) -> dict[str, float]:
    """``{"<section>/<key>": float}`` for the numbers in ``metrics`` (text, bools and None are left out)."""
    return {f"{section}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}  # numpy scalars too


def training_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A training stage's metrics by section: val_pesq -> val/pesq, best_step -> val/best_step,
    everything else (losses, lr, sparsities, parameter counts, speed) -> train/<key>."""
    val = {VALIDATION_KEYS[k]: v for k, v in metrics.items() if k in VALIDATION_KEYS}
    train = {k: v for k, v in metrics.items() if k not in VALIDATION_KEYS}
    return {**in_section(TRAIN, train), **in_section(VAL, val)}
