"""`effifusion summary`: parameter, sparsity and MAC counts of a model, as a JSON-able dict.

The model comes from params.yaml, a preset (``--preset paper``) or a trained checkpoint; MAC
counts are the architecture's own (``EnhancementModel.macs``, analytic, see models/cost.py).
"""

from __future__ import annotations

from typing import Any

from effifusion.core.config import preset_path, read_params
from effifusion.models.cost import frames_for, parameter_counts
from effifusion.models.registry import build_model, load_checkpoint


def summarize(params_path: str = "params.yaml", checkpoint: str | None = None, preset: str | None = None
              ) -> dict[str, Any]:
    """JSON-able summary of the model described by params.yaml / a preset, or of a trained checkpoint.

    MACs are for 1 s of audio (``gmac_per_second``, with the per-component breakdown) and, since
    attention grows quadratically with length, also per second of a 10 s input.
    """
    if checkpoint is not None:
        model, _ = load_checkpoint(checkpoint)
        source = str(checkpoint)
    else:
        path = preset_path(preset) if preset is not None else params_path
        params = read_params(path)
        model = build_model(params.get("model"), params.get("audio", {}).get("sample_rate", 16000))
        source = str(path)
    hop = model.frontend.hop_length
    one_s = model.macs(frames_for(1.0, model.sample_rate, hop))
    ten_s = model.macs(frames_for(10.0, model.sample_rate, hop))
    return {
        "source": source,
        "arch": model.arch,
        **parameter_counts(model),
        "gmac_per_second": round(one_s["total"] / 1e9, 4),
        "gmac_per_second_10s_input": round(ten_s["total"] / 10 / 1e9, 4),
        "macs_1s": one_s,
        "model_cfg": model.config(),
        "sample_rate": model.sample_rate,
    }
