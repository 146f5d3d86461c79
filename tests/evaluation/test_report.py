"""Pruning-sweep report: the model is chosen by validation PESQ, never by a test metric."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from effifusion.core.errors import DataError
from effifusion.evaluation.report import select_best, sweep_report, sweep_rows


def _row(amount: float, val: float | None, test: float, unseen: float | None = None) -> dict:
    return {"prune.amount": amount, "run": f"prune-{round(amount * 100)}%", "run_id": f"id{amount}",
            "val_pesq": val, "test_pesq": test, "unseen_pesq": test if unseen is None else unseen}


def test_select_best_picks_the_validation_best_not_the_test_best():
    rows = [_row(0.2, val=2.10, test=3.40, unseen=3.3),  # best on both test sets, worst on validation
            _row(0.3, val=2.55, test=2.80),
            _row(0.4, val=2.30, test=3.10)]
    best, excluded = select_best(rows)
    assert best["prune.amount"] == 0.3 and excluded == []
    # raising every test figure of another run changes nothing
    rows[2]["test_pesq"] = rows[2]["unseen_pesq"] = 4.5
    assert select_best(rows)[0]["prune.amount"] == 0.3


def test_select_best_excludes_runs_without_validation_pesq():
    rows = [_row(0.2, val=None, test=4.0), _row(0.3, val=2.0, test=2.5), _row(0.5, val=math.nan, test=4.2),
            _row(0.6, val=1.9, test=2.4)]
    best, excluded = select_best(rows)
    assert best["prune.amount"] == 0.3
    assert [r["prune.amount"] for r in excluded] == [0.2, 0.5]


def test_select_best_fails_in_one_line_when_no_run_has_validation_pesq():
    with pytest.raises(DataError, match="val/pesq") as info:
        select_best([_row(0.2, val=None, test=3.0), _row(0.3, val=None, test=2.0)])
    assert "\n" not in str(info.value)


def test_sweep_rows_read_val_pesq_from_the_run_metrics():
    run = SimpleNamespace(
        info=SimpleNamespace(run_name="prune-30%", run_id="abc"),
        data=SimpleNamespace(metrics={"val/pesq": 2.5, "test/pesq": 2.9, "train/conv_sparsity": 0.3,
                                      "export/onnx_zip_bytes": 2048.0, "rtf/onnx": 0.2},
                             params={"prune.amount": "0.3"}, tags={"dvc_exp": "e1"}))
    # a run logged before the prune stage logged val_pesq
    old = SimpleNamespace(info=SimpleNamespace(run_name="old", run_id="def"),
                          data=SimpleNamespace(metrics={"test/pesq": 3.5}, params={"prune.amount": "0.4"},
                                               tags={}))
    rows = sweep_rows([run, old])
    assert rows[0]["val_pesq"] == 2.5 and rows[0]["test_pesq"] == 2.9 and rows[0]["conv_sparsity"] == 0.3
    assert rows[0]["onnx_zip_kib"] == 2.0 and rows[0]["rtf_onnx"] == 0.2
    assert rows[1]["val_pesq"] is None
    assert select_best(rows)[0]["run_id"] == "abc"


def test_sweep_report_selects_by_validation_and_labels_test_results(tmp_path, monkeypatch):
    """End to end against a scratch MLflow store: three evaluated prune runs of one dense model,
    the test-best one has the worst validation PESQ and one run has no val_pesq at all."""
    import mlflow

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # store, lock and artifacts under tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # restored afterwards
    from effifusion.tracking import runs as tracking

    experiment = "report-test"
    tracking.setup(experiment)
    ids = {}
    for amount, val, test in ((0.2, 2.1, 3.4), (0.3, 2.6, 2.8), (0.5, None, 3.9)):
        with mlflow.start_run(run_name=f"prune-{round(amount * 100)}%") as run:
            mlflow.set_tags({"stage": "prune", "dense_run_id": "dense1"})
            mlflow.log_param("prune.amount", amount)
            metrics = {"test/pesq": test, "unseen/pesq": test - 0.3, "train/conv_sparsity": amount,
                       "train/params_nonzero": 1000 * (1 - amount), "export/onnx_zip_bytes": 4096.0,
                       "rtf/onnx": 0.1}
            if val is not None:
                mlflow.log_metric("val/pesq", val - 0.5, step=10)  # an earlier validation...
                metrics["val/pesq"] = val  # ...then the final one, logged by _finish at the last step
            mlflow.log_metrics(metrics, step=20)
            ids[amount] = run.info.run_id

    out = tmp_path / "reports" / "sweep"
    summary = sweep_report(out_dir=out, experiment=experiment)
    assert summary["runs"] == 3 and summary["selected_by"] == "val_pesq"
    assert summary["best"]["run_id"] == ids[0.3]
    assert summary["best"]["val_pesq"] == pytest.approx(2.6)
    assert summary["excluded_no_val_pesq"] == [ids[0.5]]

    md = (out / "sweep.md").read_text()
    assert "selected by validation PESQ; test metrics shown for information" in md
    assert "prune-50%" in md.split("Not considered for selection")[1]
    assert "val_pesq" in (out / "sweep.csv").read_text().splitlines()[0]

    logged = mlflow.MlflowClient().get_run(summary["report_run_id"]).data
    assert logged.metrics["sweep/best_val_pesq"] == pytest.approx(2.6)
    assert logged.metrics["sweep/selected_prune_amount"] == pytest.approx(0.3)
    assert logged.metrics["sweep/selected_test_pesq"] == pytest.approx(2.8)
    assert not any(k.startswith("sweep/best_test") for k in logged.metrics)
    assert logged.tags["selected_by"] == "val/pesq"
