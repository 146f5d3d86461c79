"""Callbacks: behaviour any model and any task can switch on, outside the training loop's code.

Pruning is one: the prune stage is the train stage started from the dense checkpoint with a
``PruningCallback``. Hooks, in the order the trainer calls them:

    on_model(model, total_steps)   before the task creates its optimisers (pruning reparametrises)
    on_step_end(step)              after each optimisation step; returns metrics to log (train/...), or None
    selectable()                   may the current weights compete for "best model"?
    on_finish(model, out_dir, plots_dir) -> metrics   after the best weights are back, before saving
    config() / state_dict() / load_state_dict()       resume identity and position
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from effifusion.core.files import write_csv, write_json
from effifusion.core.settings import PruneConfig
from effifusion.training.pruning import DynamicPruner, qualified_names, select_prunable


class Callback:
    artifacts: list[Path]  # files on_finish wrote that the run should keep (logged to MLflow)

    def __init__(self) -> None:
        self.artifacts = []

    def on_model(self, model: nn.Module, total_steps: int) -> None:
        pass

    def on_step_end(self, step: int) -> dict[str, float] | None:
        return None

    def selectable(self) -> bool:
        return True

    def on_finish(self, model: nn.Module, out_dir: Path, plots_dir: Path) -> dict[str, Any]:
        return {}

    def config(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def history(self) -> list[dict[str, Any]]:
        """Rows for the run's figures (step, value) — empty for most callbacks."""
        return []


class PruningCallback(Callback):
    """Dynamic L1 pruning to ``prune.amount`` on a cubic schedule (training/pruning.py).

    Only models at their final sparsity compete for "best"; at the end the masks are made permanent
    and the sparsity per layer is written to ``out_dir/sparsity.json`` and the curve to
    ``plots_dir/sparsity.csv``.
    """

    def __init__(self, prune: PruneConfig):
        super().__init__()
        self.cfg = prune
        self.pruner: DynamicPruner | None = None
        self.rows: list[dict[str, Any]] = []

    def on_model(self, model: nn.Module, total_steps: int) -> None:
        cfg = self.cfg
        if cfg.amount <= 0:
            return
        targets = select_prunable(model, list(cfg.layers))
        self.pruner = DynamicPruner(targets, cfg.amount, total_steps, cfg.ramp_fraction, cfg.prune_every_steps,
                                    cfg.scope, names=qualified_names(model, targets))

    def on_step_end(self, step: int) -> dict[str, float] | None:
        if self.pruner is None:
            return None
        new = self.pruner.step(step)
        if new is None:
            return None
        self.rows.append({"step": step, "sparsity": new, "target": self.pruner.target})
        return {"conv_sparsity": new}  # the curve that ends at on_finish's conv_sparsity

    def selectable(self) -> bool:
        return self.pruner is None or self.pruner.target >= self.pruner.final_amount

    def on_finish(self, model: nn.Module, out_dir: Path, plots_dir: Path) -> dict[str, Any]:
        write_csv(plots_dir / "sparsity.csv", [{"step": 0, "sparsity": 0.0, "target": 0.0}] + self.rows)
        if self.pruner is None:
            return {"conv_sparsity": 0.0}
        self.pruner.make_permanent()
        sparsity = self.pruner.sparsity()
        write_json(out_dir / "sparsity.json", sparsity)
        self.artifacts = [out_dir / "sparsity.json"]
        return {"conv_sparsity": sparsity["overall"]}

    def config(self) -> dict[str, Any]:
        return {"prune": self.cfg.to_dict()}

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict() if self.pruner else None, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.pruner is not None:
            self.pruner.load_state_dict(state["pruner"])
        self.rows = list(state["rows"])

    def history(self) -> list[dict[str, Any]]:
        return self.rows
