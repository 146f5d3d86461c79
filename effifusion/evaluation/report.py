"""Pruning-sweep report: quality against sparsity next to size and latency, from the MLflow store.

A sweep is the set of `prune` runs that fine-tuned the same dense model (tag ``dense_run_id``),
one per ``prune.amount`` (the latest run wins when a ratio was run twice). The report is written
as Markdown + CSV + PNG and logged to MLflow as a run of its own (stage ``report``); with
``register`` the selected run's ONNX model goes to the model registry.

Model selection never sees the test set: the selected run is the one with the highest validation
PESQ (MLflow metric ``val/pesq``, whose latest value the training stage logs at the end of the run:
the best model's PESQ on held-out *training* speakers). Test and unseen-noise metrics are shown in
the table for information only. A run without a finite ``val/pesq`` is left out of the choice, with
a note. The runs' metrics are read by their MLflow names (effifusion.tracking.names: ``test/pesq``,
``train/conv_sparsity``, ``export/onnx_zip_bytes``, ...); the table, the CSV and the selection use
flat column names (``test_pesq``, ``val_pesq``, ...).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from effifusion.core import files
from effifusion.tracking import figures
from effifusion.tracking import runs as tracking
from effifusion.tracking.names import EXPORT, RTF, SWEEP, TEST_PESQ, TRAIN, VAL_PESQ, in_section
from effifusion.core.config import read_params, repo_root
from effifusion.core.errors import DataError

QUALITY = ("pesq", "csig", "cbak", "covl", "stoi", "estoi", "si_sdr", "si_sir", "si_sar")  # MLflow names
QUALITY_TITLES = {"si_sdr": "SI-SDR (dB)", "si_sir": "SI-SIR (dB)", "si_sar": "SI-SAR (dB)"}  # others: NAME
SETS = ("test", "unseen")
REGISTERED_MODEL = "effifusion-gan"
SELECT_BY = "val_pesq"  # the row column selection reads: MLflow's val/pesq, never a test metric


def sweep_runs(experiment: str, dense_run_id: str | None = None) -> tuple[str, list[Any]]:
    """The evaluated prune runs of one sweep, one per amount, sorted by amount."""
    import mlflow

    exp_id = tracking.setup(experiment)
    runs = mlflow.search_runs([exp_id], filter_string="tags.stage = 'prune' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    runs = [r for r in runs if TEST_PESQ in r.data.metrics]  # only runs that reached evaluate
    if not runs:
        raise DataError(f"MLflow experiment {experiment!r} at {tracking.tracking_uri()} has no evaluated prune "
                        "runs: run the pipeline (dvc repro) or a sweep (dvc exp run) first")
    if dense_run_id is None:
        dense_run_id = runs[0].data.tags.get("dense_run_id", "")
    chosen: dict[float, Any] = {}
    for r in runs:  # newest first: keep the first run seen for each amount
        if r.data.tags.get("dense_run_id", "") != dense_run_id:
            continue
        amount = float(r.data.params["prune.amount"])
        chosen.setdefault(amount, r)
    return dense_run_id, [chosen[a] for a in sorted(chosen)]


def sweep_rows(runs: list[Any]) -> list[dict[str, Any]]:
    """One row per run with flat column names, read from the runs' sectioned MLflow metrics."""
    rows = []
    for r in runs:
        m = r.data.metrics
        row: dict[str, Any] = {
            "run": r.info.run_name,
            "dvc_exp": r.data.tags.get("dvc_exp", ""),
            "prune.amount": float(r.data.params["prune.amount"]),
            "conv_sparsity": m.get(f"{TRAIN}/conv_sparsity"),
            "params_nonzero": int(m[f"{TRAIN}/params_nonzero"]) if f"{TRAIN}/params_nonzero" in m else None,
            "onnx_zip_kib": m[f"{EXPORT}/onnx_zip_bytes"] / 1024 if f"{EXPORT}/onnx_zip_bytes" in m else None,
            "rtf_onnx": m.get(f"{RTF}/onnx"),
            "rtf_torch": m.get(f"{RTF}/torch"),
            SELECT_BY: m.get(VAL_PESQ),
        }
        for s in SETS:
            for q in QUALITY:
                row[f"{s}_{q}"] = m.get(f"{s}/{q}")
        row["run_id"] = r.info.run_id
        rows.append(row)
    return rows


def select_best(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The row with the highest validation PESQ, and the rows left out for having none.

    Only ``val_pesq`` (MLflow's ``val/pesq``) is read: test and unseen-set metrics never take part in
    the choice. Rows whose ``val_pesq`` is missing or not finite are returned as excluded (the report
    lists them); ties go to the lower prune.amount's row, i.e. the first in the sweep's order. Raises
    DataError when no row has a usable ``val_pesq``.
    """
    usable, excluded = [], []
    for r in rows:
        v = r.get(SELECT_BY)
        (usable if isinstance(v, (int, float)) and math.isfinite(v) else excluded).append(r)
    if not usable:
        raise DataError(f"none of the {len(rows)} prune runs has a finite {VAL_PESQ!r} metric, so no model "
                        "can be selected without looking at the test set: rerun the prune stage (it logs "
                        f"{VAL_PESQ})")
    best = usable[0]
    for r in usable[1:]:
        if r[SELECT_BY] > best[SELECT_BY]:
            best = r
    return best, excluded


def plot_sweep(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    plt = figures.pyplot()
    x = [100 * (r["conv_sparsity"] if r["conv_sparsity"] is not None else r["prune.amount"]) for r in rows]
    fig, axes = plt.subplots(1, len(QUALITY), figsize=(4 * len(QUALITY), 3.4))
    for ax, q in zip(axes, QUALITY):
        for s, style in zip(SETS, ("o-", "s--")):
            ys = [r[f"{s}_{q}"] for r in rows]
            if any(y is not None for y in ys):
                ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=s)
        ax.set_title(QUALITY_TITLES.get(q, q.upper()))
        ax.set_xlabel("conv weights pruned (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Quality against sparsity")
    quality = figures.save_figure(fig, out_dir / "sweep_quality.png")

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, title in zip(axes, ("params_nonzero", "onnx_zip_kib", "rtf_onnx"),
                              ("non-zero parameters", "ONNX size, zip-compressed (KiB)", "real-time factor (ONNX, CPU)")):
        ax.plot(x, [float("nan") if r[key] is None else r[key] for r in rows], "o-")
        ax.set_title(title)
        ax.set_xlabel("conv weights pruned (%)")
        ax.grid(alpha=0.3)
    cost = figures.save_figure(fig, out_dir / "sweep_cost.png")
    return [quality, cost]


def sweep_report(out_dir: str | Path = "reports/sweep", experiment: str | None = None, register: bool = False,
                 dense_run_id: str | None = None) -> dict[str, Any]:
    """Write reports/sweep/{sweep.md, sweep.csv, *.png}, log them to MLflow, optionally register the run
    with the best validation PESQ (``select_best``; test metrics are shown, never used to choose)."""
    import mlflow

    out_dir = Path(out_dir)
    experiment = experiment or read_params(repo_root() / "params.yaml")["mlflow"]["experiment"]
    dense_run_id, runs = sweep_runs(experiment, dense_run_id)
    rows = sweep_rows(runs)
    best, excluded = select_best(rows)
    columns = ["prune.amount", "conv_sparsity", "params_nonzero", "onnx_zip_kib", "rtf_onnx", SELECT_BY,
               *[f"{s}_{q}" for s in SETS for q in QUALITY], "dvc_exp", "run"]
    files.write_csv(out_dir / "sweep.csv", rows, columns + ["run_id"])
    figures = plot_sweep(rows, out_dir)
    test_pesq = best.get("test_pesq")
    md = [
        "# Pruning sweep", "",
        f"{len(rows)} runs fine-tuned from dense run `{dense_run_id}` (MLflow experiment `{experiment}`).",
        "`val_pesq` is each run's PESQ on held-out training speakers (validation set, the weights it kept);",
        "the other quality metrics are means over the test set and the unseen-noise set; sizes are measured",
        "on the exported ONNX file; the real-time factor is compute seconds per audio second on CPU (lower is",
        "faster).",
        "Unstructured sparsity shrinks the compressed file, not the latency (dense kernels run the zeros).", "",
        files.markdown_table(rows, columns),
        "Model selected by validation PESQ; test metrics shown for information (never used for choosing).", "",
        f"Selected: prune.amount = {best['prune.amount']} (run `{best['run']}`), validation PESQ "
        f"**{best[SELECT_BY]:.3f}**; its test PESQ: "
        + (f"{test_pesq:.3f}." if test_pesq is not None else "not logged."), "",
    ]
    if excluded:
        md += [f"Not considered for selection ({len(excluded)} run(s) without a `{SELECT_BY}` metric): "
               + ", ".join(f"`{r['run']}` (prune.amount = {r['prune.amount']})" for r in excluded) + ".", ""]
    md += ["![quality](sweep_quality.png)", "", "![cost](sweep_cost.png)", ""]
    files.write_text(out_dir / "sweep.md", "\n".join(md))

    tracking.setup(experiment)
    with mlflow.start_run(run_name=f"sweep-report-{len(rows)}pts") as run:
        mlflow.set_tags({"stage": "report", "dense_run_id": dense_run_id, "selected_by": VAL_PESQ,
                         "selected_run_id": best["run_id"]})
        for f in [out_dir / "sweep.md", out_dir / "sweep.csv", *figures]:
            mlflow.log_artifact(str(f), "sweep")
        logged = {"best_val_pesq": best[SELECT_BY], "selected_prune_amount": best["prune.amount"],
                  "runs_excluded_no_val_pesq": len(excluded)}
        for s in SETS:  # the selected run's own test results, for information; not a "best test" figure
            if best.get(f"{s}_pesq") is not None:
                logged[f"selected_{s}_pesq"] = best[f"{s}_pesq"]
        mlflow.log_metrics(in_section(SWEEP, logged))
        report_run = run.info.run_id
    summary: dict[str, Any] = {
        "runs": len(rows), "dense_run_id": dense_run_id, "report_run_id": report_run, "selected_by": SELECT_BY,
        "best": {k: best.get(k) for k in ("prune.amount", SELECT_BY, "test_pesq", "run_id")},
        "excluded_no_val_pesq": [r["run_id"] for r in excluded],
        "out_dir": str(out_dir),
    }
    if register:
        summary["registered"] = register_best(best["run_id"])
    return summary


def register_best(run_id: str, name: str = REGISTERED_MODEL) -> dict[str, Any]:
    """Register the ONNX model logged by the export stage in run ``run_id`` as a new version of ``name``."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(experiment_ids=[experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'", output_format="list")
    models = [m for m in models if m.name == "onnx"]  # the name export.log_to_mlflow gives it
    if not models:
        raise DataError(f"run {run_id} has no logged ONNX model (did the export stage run?)")
    version = mlflow.register_model(f"models:/{models[0].model_id}", name)
    client.set_model_version_tag(name, version.version, "source_run_id", run_id)
    return {"name": name, "version": int(version.version)}
