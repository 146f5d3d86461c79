"""Architectures by name, and checkpoints that rebuild their model without params.yaml.

``model.arch`` in params.yaml picks an entry of ARCHITECTURES; a new architecture is a folder
under models/ whose package exposes ``MODEL`` (an EnhancementModel subclass), one line here and a
preset. A checkpoint stores {arch, config, sample_rate, weights, extra}; pruning
reparametrisations (weight_orig / weight_mask) are folded into plain weights when loading, and a
channel-pruned model is rebuilt at the layer widths its ``extra`` records (models/widths.py).
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from effifusion.core.errors import ConfigError
from effifusion.core.files import atomic_path
from effifusion.core.settings import ModelConfig
from effifusion.models.base import EnhancementModel
from effifusion.models.widths import WIDTHS_KEY, resize

ARCHITECTURES: dict[str, str | type[EnhancementModel]] = {  # name -> package exposing MODEL (or the class)
    "effifusion_gan": "effifusion.models.effifusion_gan",
    "muse": "effifusion.models.muse",
    "imse": "effifusion.models.imse",
    "saf": "effifusion.models.saf",
    "sgmse": "effifusion.models.sgmse",
    "gp_sgmse": "effifusion.models.gp_sgmse",
}
CHECKPOINT_KEYS = ("arch", "config", "sample_rate", "weights")
MODEL_FILE = "model.pt"  # a trained model's checkpoint in its folder (models/dense, models/pruned)
LEGACY_MODEL_FILE = "generator.pt"  # the same file's name before every architecture shared one contract
_warned: set[Path] = set()


def model_file(folder: str | os.PathLike) -> Path:
    """The checkpoint in a model folder: ``model.pt``, or an older folder's ``generator.pt``.

    The old name still loads, with one deprecation line per folder on stderr.
    """
    folder = Path(folder)
    current, legacy = folder / MODEL_FILE, folder / LEGACY_MODEL_FILE
    if not current.exists() and legacy.is_file():
        if legacy not in _warned:
            _warned.add(legacy)
            print(f"effifusion: {legacy}: deprecated checkpoint name, loaded; rename it to {MODEL_FILE}",
                  file=sys.stderr)
        return legacy
    return current


def model_class(arch: Any) -> type[EnhancementModel]:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"params.yaml model.arch: {arch!r} is not a known architecture "
                          f"(known: {', '.join(ARCHITECTURES)})")
    entry = ARCHITECTURES[arch]
    return importlib.import_module(entry).MODEL if isinstance(entry, str) else entry


def check_model_config(model_cfg: Any) -> ModelConfig:
    """params.yaml's ``model`` checked and typed by its architecture without building the model (milliseconds)."""
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"params.yaml model: expected a mapping of settings, got {type(model_cfg).__name__}")
    return model_class(model_cfg.get("arch")).check_config(model_cfg)


def check_objective(model: Any, objective: Any) -> None:
    """ConfigError unless ``train.objective`` can train the architecture (its class, or params["model"])."""
    cls = model if isinstance(model, type) else model_class(model.get("arch") if isinstance(model, dict) else None)
    if objective not in cls.objectives:
        trained_by = [arch for arch in ARCHITECTURES if objective in model_class(arch).objectives]
        raise ConfigError(f"train.objective: {objective!r} cannot train model.arch {cls.arch!r} (its objectives: "
                          f"{', '.join(cls.objectives)}; {objective!r} trains {', '.join(trained_by) or 'none'})")


def build_model(model_cfg: Any, sample_rate: int) -> EnhancementModel:
    """The model params.yaml's ``model`` (or a checkpoint's config) describes: ``arch`` picks the class,
    whose config type checks the rest."""
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"params.yaml model: expected a mapping of settings, got {type(model_cfg).__name__}")
    return model_class(model_cfg.get("arch")).from_config(model_cfg, sample_rate)


def save_checkpoint(path: str | os.PathLike, model: EnhancementModel, extra: dict[str, Any] | None = None) -> None:
    """Write {arch, config, sample_rate, weights, extra} atomically.

    ``extra`` must hold tensors and plain Python values (the loader uses weights_only=True). A pruned
    model's weight_orig / weight_mask pairs are saved as they are; ``load_checkpoint`` folds them. A
    channel-pruned model's layer widths go into ``extra["pruned_widths"]`` (models/widths.py).
    """
    extra = dict(extra or {})
    if getattr(model, WIDTHS_KEY, None):
        extra[WIDTHS_KEY] = getattr(model, WIDTHS_KEY)
    blob = {"arch": model.arch, "config": model.config(), "sample_rate": int(model.sample_rate),
            "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": extra}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a path would name the archive after the random temporary file
            torch.save(blob, f)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict; ConfigError naming the file when it is missing or not a checkpoint.

    Whatever the file holds (random bytes, text, a pickled module, a tensor), the caller gets a
    ConfigError, never torch's own exception: the path comes from the user.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise ConfigError(f"{path}: not a model checkpoint (not a file torch.save writes, or cut short)")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message suggests an unsafe load: quote only its reason
        text = str(exc)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe:
            raise ConfigError(f"{path}: not a model checkpoint (it holds pickled Python objects such as "
                              f"{unsafe.group(1)}, not only weights and settings)") from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = reason.group(1).strip() if reason else _first_line(exc)
        raise ConfigError(f"{path}: not a readable model checkpoint (damaged: {detail[:300]})") from None
    except Exception as exc:  # torch raises many types on a damaged archive (RuntimeError, KeyError, ...)
        raise ConfigError(f"{path}: not a readable model checkpoint ({_first_line(exc)})") from None
    if not isinstance(blob, dict) or not set(CHECKPOINT_KEYS) <= set(blob):
        raise ConfigError(f"{path}: not a model checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    weights, rate = blob["weights"], blob["sample_rate"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"{path}: not a model checkpoint (weights are not a mapping of tensors)")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise ConfigError(f"{path}: not a model checkpoint (sample_rate {rate!r} is not a positive integer)")
    if not isinstance(blob.get("extra", {}), dict):
        raise ConfigError(f"{path}: not a model checkpoint (extra is not a mapping)")
    return blob


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def fold_pruning(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each ``<name>_orig`` / ``<name>_mask`` pair left by torch.nn.utils.prune by orig · mask."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state_dict:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state_dict:
            base = key[: -len("_orig")]
            out[base] = value * state_dict[base + "_mask"].to(value.dtype)
        else:
            out[key] = value
    return out


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[EnhancementModel, dict[str, Any]]:
    """(model in eval mode, the checkpoint's ``extra``); ConfigError naming the file when unusable.

    A channel-pruned checkpoint is rebuilt at its recorded layer widths before its weights load.
    """
    blob = read_checkpoint(path, map_location)
    try:
        model = build_model(blob["config"], blob["sample_rate"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: checkpoint config: {exc}") from None
    if WIDTHS_KEY in blob.get("extra", {}):
        resize(model, blob["extra"][WIDTHS_KEY], str(path))
    try:
        result = model.load_state_dict(fold_pruning(blob["weights"]), strict=False)
    except RuntimeError as exc:  # shape mismatch
        detail = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"{path}: weights do not match its config ({detail})") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"{path}: weights do not match its config (missing: {result.missing_keys[:3]}, "
                          f"unexpected: {result.unexpected_keys[:3]})")
    return model.to(map_location).eval(), dict(blob.get("extra", {}))
