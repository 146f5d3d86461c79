"""``load_enhancer``: an Enhancer (runtime/enhancer.py) for an exported ``.onnx`` or a model checkpoint ``.pt``.

The ``.onnx`` path is the torch-free runtime's; a checkpoint runs the model's ``enhance`` in PyTorch (CPU
or CUDA, the pipeline install). Importing this module does not import torch: a plain install still
enhances ``.onnx`` files through it, and a ``.pt`` there gets one line naming the install it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.runtime.enhancer import PIPELINE_EXTRA, Enhancer, check_model_file, load_onnx


def load_enhancer(model_path: str | Path, device: str = "cpu", threads: int | None = None,
                  sampler: dict[str, Any] | None = None, profile: str | None = None) -> Enhancer:
    """An Enhancer for an exported ``.onnx`` (ONNX Runtime, CPU) or a model checkpoint ``.pt`` (PyTorch).

    ``threads`` sets ONNX Runtime's intra-op threads, or torch.set_num_threads for checkpoints
    (process-wide). ``sampler`` overrides a diffusion model's sampler settings key by key (steps,
    mode, seed, ...; diffusion/sampler.py); a model without a sampler refuses it. A missing or
    unreadable model (random bytes, text, a .pt that is no checkpoint, an ONNX graph that is no
    effifusion export) is a ConfigError naming the file and the problem. ``profile`` (a file prefix): run
    ONNX Runtime's profiler on an ``.onnx`` (``enhancer.session.end_profiling()``); checkpoints ignore it.
    """
    path = check_model_file(Path(model_path))
    if path.suffix.lower() in (".pt", ".pth"):
        return _torch_enhancer(path, device, threads, sampler)
    return load_onnx(path, device, threads, sampler, profile)


def _torch_enhancer(path: Path, device: str, threads: int | None, sampler: dict[str, Any] | None = None
                    ) -> Enhancer:
    try:
        import torch

        from effifusion.models.registry import load_checkpoint
    except ImportError:
        raise ConfigError(f"{path}: checkpoints need `{PIPELINE_EXTRA}` (PyTorch); "
                          "the exported .onnx model needs only the plain install") from None

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if threads:
        torch.set_num_threads(int(threads))
    model, _ = load_checkpoint(path, map_location=device)
    if sampler:
        if model.runtime != "diffusion":
            raise ConfigError(f"{path}: sampler settings given, but {model.arch} has no sampler "
                              "(only the diffusion models sgmse and gp_sgmse do)")
        try:
            model.with_sampler(**sampler)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def run_batch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.enhance(torch.from_numpy(x).to(device)).float().cpu().numpy()

    card = {"arch": model.arch, "sample_rate": model.sample_rate, "min_samples": model.min_samples,
            "params_total": sum(p.numel() for p in model.parameters()), "config": model.config()}
    if model.runtime == "diffusion":
        card["sampler"] = model.sampler.config()
    return Enhancer(run_batch, model.sample_rate, "pytorch", str(path), card)
