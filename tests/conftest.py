"""Session-wide fixtures: the expensive artefacts many tests read, built once per test session.

Each is built the way the pipeline builds it (the same stage functions, the same exporter) and lives in a
session temporary folder. Tests treat them as read-only: a test that needs to change one copies it first
(shutil.copytree), so no test sees another's leftovers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from effifusion.core.parallel import THREAD_ENV  # torch-free: nothing below has imported torch yet
from helpers import TINY_PARITY_LENGTHS_S, make_prepared, tiny_params

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One math thread per pytest-xdist worker (read by torch, numpy's BLAS, ONNX Runtime sessions and the
    # tests' subprocesses when they start): N workers on N cores, instead of each taking every core.
    for _var in THREAD_ENV:
        os.environ.setdefault(_var, "1")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_prepared()`` once per session: a data/prepared of 8 train, 2 val and 2 test pairs."""
    return make_prepared(tmp_path_factory.mktemp("tiny_corpus") / "prepared")


@pytest.fixture(scope="session")
def tiny_dense(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``tiny_params(train__epochs=1)`` trained once on ``tiny_corpus`` by the train stage (4 steps):
    {"root", "model_dir" (root/models_train: model.pt, discriminator.pt), "resume_dir" (root/ckpt:
    its finished train.pt), "metrics"}. Copy ``root`` (shutil.copytree) before training on from it."""
    from effifusion.training.stages import train_dense

    root = tmp_path_factory.mktemp("tiny_dense")
    metrics = train_dense(tiny_params(train__epochs=1), prepared_dir=tiny_corpus,
                          out_dir=root / "models_train", metrics_path=root / "train.json",
                          plots_dir=root / "plots_train", resume_dir=root / "ckpt", track=False)
    assert metrics["steps"] == 4 and not metrics.get("interrupted")
    return {"root": root, "model_dir": root / "models_train", "resume_dir": root / "ckpt", "metrics": metrics}


def _tiny_generator():
    """The tiny effifusion-GAN of ``tiny_params()`` (C = 8, one TS-Conformer block), seed 0, eval mode."""
    import torch

    from effifusion.models.registry import build_model

    torch.manual_seed(0)
    return build_model(tiny_params()["model"], 16000).eval()


def _export(ckpt: Path, out: Path) -> dict:
    from effifusion.core.settings import AudioConfig, ExportConfig
    from effifusion.inference.export import export_onnx

    return export_onnx(ckpt, out, ExportConfig(18, TINY_PARITY_LENGTHS_S, 1e-4), AudioConfig(16000))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny generator, untrained, saved and exported once (parity at TINY_PARITY_LENGTHS_S):
    {"ckpt", "onnx" (onnx/pruned.onnx, beside its report pruned.export.json), "report", "params_total"}."""
    from effifusion.models.registry import save_checkpoint

    tmp = tmp_path_factory.mktemp("tiny_export")
    model = _tiny_generator()
    save_checkpoint(tmp / "model.pt", model)
    report = _export(tmp / "model.pt", tmp / "onnx")
    return {"ckpt": tmp / "model.pt", "onnx": Path(report["onnx_file"]), "report": report,
            "params_total": sum(p.numel() for p in model.parameters())}


@pytest.fixture(scope="session")
def tiny_pruned_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny generator with 30 % of its conv weights zeroed (global L1, torch.nn.utils.prune: saved with
    its weight_orig / weight_mask pairs), exported once (parity at TINY_PARITY_LENGTHS_S):
    {"ckpt", "out" (the export's folder), "onnx", "report", "generator" (the checkpoint, loaded)}."""
    from torch.nn.utils import prune

    from effifusion.models.cost import conv_modules
    from effifusion.models.registry import load_checkpoint, save_checkpoint

    tmp = tmp_path_factory.mktemp("tiny_pruned_export")
    model = _tiny_generator()
    prune.global_unstructured([(m, "weight") for _, m in conv_modules(model)], prune.L1Unstructured, amount=0.3)
    ckpt = tmp / "model.pt"
    save_checkpoint(ckpt, model)  # still holds weight_orig / weight_mask
    report = _export(ckpt, tmp / "onnx")
    generator, _ = load_checkpoint(ckpt)
    return {"ckpt": ckpt, "out": tmp / "onnx", "onnx": Path(report["onnx_file"]), "report": report,
            "generator": generator}
