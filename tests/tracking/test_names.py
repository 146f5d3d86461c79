"""MLflow metric names by section: what the UI groups, what the report reads back."""

from __future__ import annotations

import numpy as np

from effifusion.tracking.names import VAL_PESQ, in_section, training_metrics


def test_in_section_prefixes_numbers_and_drops_the_rest():
    got = in_section("export", {"onnx_bytes": 10, "parity": np.float32(0.5), "exporter": "dynamo", "flag": True,
                                "missing": None})
    assert got == {"export/onnx_bytes": 10.0, "export/parity": 0.5}
    assert all(type(v) is float for v in got.values())


def test_training_metrics_put_validation_under_val_and_the_rest_under_train():
    final = {"val_pesq": 2.1, "best_step": 8, "steps": 8, "sparsity": 0.2, "conv_sparsity": 0.3, "g_total": 1.5,
             "lr": 1e-3, "steps_per_s": 3.0}
    assert training_metrics(final) == {
        VAL_PESQ: 2.1, "val/best_step": 8.0, "train/steps": 8.0, "train/sparsity": 0.2,
        "train/conv_sparsity": 0.3, "train/g_total": 1.5, "train/lr": 1e-3, "train/steps_per_s": 3.0}
    assert training_metrics({"val_pesq": float("nan")})[VAL_PESQ] != 0  # NaN passes through (a failed PESQ)
