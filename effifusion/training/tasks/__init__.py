"""Training objectives by name (``train.objective`` in params.yaml); see tasks/base.py for the interface."""

from __future__ import annotations

from effifusion.core.errors import ConfigError
from effifusion.training.tasks.base import Task
from effifusion.training.tasks.metric_gan import MetricGanTask
from effifusion.training.tasks.predictive import PredictiveTask
from effifusion.training.tasks.score_matching import ScoreMatchingTask

TASKS: dict[str, type[Task]] = {"metric_gan": MetricGanTask, "predictive": PredictiveTask,
                                 "score_matching": ScoreMatchingTask}


def task_class(name: object) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"train.objective: {name!r} is not a known objective (known: {', '.join(TASKS)})")
    return TASKS[name]
