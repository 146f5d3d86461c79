"""The diffusion models in ONNX Runtime (torch-free): the exported networks inside diffusion/'s sampler."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.diffusion import spectrum
from effifusion.diffusion.enhance import enhance_normalised
from effifusion.diffusion.sampler import settings_with
from effifusion.diffusion.sde import OuveSde


def diffusion_run_batch(path: Path, session: Any, meta: dict[str, str], threads: int | None,
                        overrides: dict[str, Any] | None = None, predictive_path: Path | None = None
                        ) -> tuple[Any, dict[str, Any]]:
    """(``run_batch`` [B, N] -> [B, N], the sampler settings it uses) for a diffusion export at ``path``;
    its predictive graph is the card's ``predictive_file`` beside it (or ``predictive_path``: export's
    parity check runs the files before they take their final names)."""
    from effifusion.runtime.onnx_model import onnx_session

    try:
        sde = OuveSde.from_config(json.loads(meta["sde"]))
        base = json.loads(meta["sampler"])
        n_fft, hop = int(meta["n_fft"]), int(meta["hop_length"])
        alpha, beta = float(meta["compress_factor"]), float(meta["spec_scale"])
        multiple, min_samples = int(meta["time_multiple"]), int(meta["min_samples"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: damaged diffusion model card ({type(exc).__name__}: {exc})") from None
    settings = settings_with(base, overrides, bool(meta.get("predictive_file")), f"{path}: ", n_fft // 2 + 1)
    predictive = None
    if meta.get("predictive_file"):
        pred_path = Path(predictive_path) if predictive_path else path.with_name(meta["predictive_file"])
        if not pred_path.is_file():
            raise ConfigError(f"{path}: its predictive network {pred_path.name} is missing (it is exported beside "
                              "the score network; copy both files)")
        predictive = onnx_session(pred_path, threads)

    def score_fn(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = session.run(["score"], {"x": spectrum.as_channels(x), "y": spectrum.as_channels(y), "t": t})[0]
        return spectrum.as_complex(out)

    def predict_fn(y: np.ndarray) -> np.ndarray:
        return spectrum.as_complex(predictive.run(["estimate"], {"y": spectrum.as_channels(y)})[0])

    def run_batch(wav: np.ndarray) -> np.ndarray:
        n = wav.shape[-1]
        gain = 1.0 / np.maximum(np.max(np.abs(wav), axis=-1, keepdims=True), np.float32(1e-8))
        x = wav * gain
        if n < min_samples:
            x = np.pad(x, ((0, 0), (0, min_samples - n)))
        y = enhance_normalised(x, n_fft=n_fft, hop=hop, alpha=alpha, beta=beta, time_multiple=multiple,
                               score_fn=score_fn, predict_fn=predict_fn if predictive else None, sde=sde,
                               settings=settings)
        return (y[:, :n] / gain).astype(np.float32)

    return run_batch, settings.config()
