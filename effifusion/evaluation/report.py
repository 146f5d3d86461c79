"""Pruning-sweep report: quality against sparsity next to size and latency, from the MLflow store.

A sweep is the dense model's train run (the 0 % point, scored once by the evaluate_dense stage) and
the `prune` runs that fine-tuned it (tag ``dense_run_id``), one per ``prune.method`` and
``prune.amount`` (the latest run wins when a point was run twice). The report is written
as Markdown + CSV + PNG and logged to MLflow as a run of its own (stage ``report``); with
``register`` the selected run's model goes to the model registry as an MLflow pyfunc that enhances
audio (tracking/serving.py), which ``mlflow models serve`` serves.

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
from effifusion.core.config import read_params, repo_root
from effifusion.core.errors import DataError
from effifusion.tracking import figures
from effifusion.tracking import runs as tracking
from effifusion.tracking.names import BENCH, EXPORT, RTF, SWEEP, TEST_PESQ, TRAIN, VAL_PESQ, in_section

QUALITY = ("pesq", "csig", "cbak", "covl", "stoi", "estoi", "si_sdr", "si_sir", "si_sar")  # MLflow names
QUALITY_TITLES = {"si_sdr": "SI-SDR (dB)", "si_sir": "SI-SIR (dB)", "si_sar": "SI-SAR (dB)"}  # others: NAME
SETS = ("test", "unseen")
REGISTERED_MODEL = "effifusion-gan"
SELECT_BY = "val_pesq"  # the row column selection reads: MLflow's val/pesq, never a test metric


def sweep_runs(experiment: str, dense_run_id: str | None = None) -> tuple[str, list[Any]]:
    """The dense (train) run of one sweep, then its evaluated prune runs, one per (method, amount).

    The dense run comes first, as the sweep's 0 % point, when the evaluate_dense stage scored it.
    """
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
    chosen: dict[tuple[str, float], Any] = {}
    for r in runs:  # newest first: keep the first run seen for each (method, amount)
        if r.data.tags.get("dense_run_id", "") != dense_run_id:
            continue
        chosen.setdefault((_method(r), _layers(r), float(r.data.params["prune.amount"])), r)
    ordered = [chosen[k] for k in sorted(chosen)]
    dense = []
    if dense_run_id:
        try:
            run = mlflow.MlflowClient().get_run(dense_run_id)
        except mlflow.exceptions.MlflowException:  # the dense run was deleted: the sweep without its 0 % point
            run = None
        if run is not None and TEST_PESQ in run.data.metrics:
            dense = [run]
    return dense_run_id, dense + ordered


def _layers(run: Any) -> str:
    """The prune run's prune.layers as logged (a list's text, e.g. "['all-conv', 'all-linear']")."""
    return run.data.params.get("prune.layers", "")


def _method(run: Any) -> str:
    """The prune run's prune.method (runs from before the setting existed pruned l1_unstructured)."""
    return run.data.params.get("prune.method", "l1_unstructured")


def sweep_rows(runs: list[Any]) -> list[dict[str, Any]]:
    """One row per run with flat column names, read from the runs' sectioned MLflow metrics; the train
    run (dense) is the 0 % point of every method."""
    rows = []
    for r in runs:
        m = r.data.metrics
        dense = r.data.tags.get("stage") == "train"
        row: dict[str, Any] = {
            "run": r.info.run_name,
            "dvc_exp": r.data.tags.get("dvc_exp", ""),
            "variant": "dense" if dense else "pruned",
            "prune.method": "dense" if dense else _method(r),
            "prune.layers": "" if dense else _layers(r),
            "prune.amount": 0.0 if dense else float(r.data.params["prune.amount"]),
            "conv_sparsity": 0.0 if dense else m.get(f"{TRAIN}/conv_sparsity"),
            "macs_removed": 0.0 if dense else m.get(f"{TRAIN}/macs_removed_fraction"),
            "params_nonzero": int(m[f"{TRAIN}/params_nonzero"]) if f"{TRAIN}/params_nonzero" in m else None,
            "onnx_zip_kib": m[f"{EXPORT}/onnx_zip_bytes"] / 1024 if f"{EXPORT}/onnx_zip_bytes" in m else None,
            "gmac_per_s": m.get(f"{BENCH}/gmac_per_s_audio"),
            "rtf_bench": m.get(f"{BENCH}/rtf"),
            "peak_rss_mib": m.get(f"{BENCH}/peak_rss_mib"),
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


def _series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows per pruning method, each starting at the dense model (0 %) when it is in the sweep."""
    dense = [r for r in rows if r["variant"] == "dense"]
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:  # one line per (method, layers): the same amount of other layers is another curve
        if r["variant"] == "pruned":
            series.setdefault(_label(r, rows), list(dense)).append(r)
    return dict(sorted(series.items()))


def _label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The method, with prune.layers when the sweep prunes other layer sets with that method too."""
    layer_sets = {r["prune.layers"] for r in rows if r["prune.method"] == row["prune.method"]}
    return row["prune.method"] if len(layer_sets) <= 1 else f"{row['prune.method']} {row['prune.layers']}"


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def plot_sweep(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """sweep_quality.png (quality against the fraction pruned, one line per method and set), sweep_cost.png
    (measured cost against it) and sweep_pareto.png (test PESQ against measured RTF: a test-set picture)."""
    plt = figures.pyplot()
    series = _series(rows)
    fig, axes = plt.subplots(1, len(QUALITY), figsize=(4 * len(QUALITY), 3.4))
    for ax, q in zip(axes, QUALITY):
        for method, pts in series.items():
            for s, style in zip(SETS, ("o-", "s--")):
                ys = [r[f"{s}_{q}"] for r in pts]
                if any(y is not None for y in ys):
                    ax.plot([100 * r["prune.amount"] for r in pts], [_nan(y) for y in ys], style,
                            label=f"{method}, {s}")
        ax.set_title(QUALITY_TITLES.get(q, q.upper()))
        ax.set_xlabel("prunable parameters removed (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Quality against pruning (0 % = the dense model)")
    quality = figures.save_figure(fig, out_dir / "sweep_quality.png")

    cost_keys = (("params_nonzero", "non-zero parameters"), ("gmac_per_s", "GMAC per s of audio (model card)"),
                 ("rtf_bench", "real-time factor (bench, 1 thread, 2 s)"), ("peak_rss_mib", "peak memory (MiB)"))
    fig, axes = plt.subplots(1, len(cost_keys), figsize=(4 * len(cost_keys), 3.4))
    for ax, (key, title) in zip(axes, cost_keys):
        for method, pts in series.items():
            ax.plot([100 * r["prune.amount"] for r in pts], [_nan(r[key]) for r in pts], "o-", label=method)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("prunable parameters removed (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    cost = figures.save_figure(fig, out_dir / "sweep_cost.png")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, pts in series.items():
        pts = [r for r in pts if r["rtf_bench"] is not None and r["test_pesq"] is not None]
        ax.plot([r["rtf_bench"] for r in pts], [r["test_pesq"] for r in pts], "o-", label=method)
        for r in pts:
            ax.annotate(f"{100 * r['prune.amount']:.0f}%", (r["rtf_bench"], r["test_pesq"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("real-time factor (ONNX Runtime, 1 thread, 2 s input; lower is faster)")
    ax.set_ylabel("PESQ (test set)")
    ax.set_title("TEST-SET plot, for information: PESQ against measured RTF\n(selection uses validation PESQ only)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    pareto = figures.save_figure(fig, out_dir / "sweep_pareto.png")
    return [quality, cost, pareto]


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
    columns = ["prune.method", "prune.layers", "prune.amount", "macs_removed", "params_nonzero", "gmac_per_s",
               "rtf_bench", "peak_rss_mib", "onnx_zip_kib", SELECT_BY,
               *[f"{s}_{q}" for s in SETS for q in QUALITY], "dvc_exp", "run"]
    files.write_csv(out_dir / "sweep.csv", rows, columns + ["run_id"])
    figures = plot_sweep(rows, out_dir)
    test_pesq = best.get("test_pesq")
    md = [
        "# Pruning sweep", "",
        f"{len(rows)} runs: the dense model (run `{dense_run_id}`, prune.amount 0) and the pruning runs "
        f"fine-tuned from it (MLflow experiment `{experiment}`).",
        "`prune.amount` is the fraction of prunable parameters removed; `macs_removed` the fraction of the",
        "model's MACs removed (channel pruning; unstructured pruning removes none: dense kernels run the zeros).",
        "`val_pesq` is each run's PESQ on held-out training speakers (validation set, the weights it kept);",
        "the other quality metrics are means over the test set and the unseen-noise set. Cost is measured on",
        "the exported ONNX file by `effifusion bench --model` in a fresh process (1 thread, 2 s input):",
        "`rtf_bench` (compute seconds per audio second, lower is faster), `peak_rss_mib`, and `gmac_per_s`",
        "(the MACs the exported network executes per second of audio, from its model card).", "",
        files.markdown_table(rows, columns),
        "Model selected by validation PESQ; test metrics shown for information (never used for choosing).", "",
        f"Selected: {best['prune.method']} at prune.amount = {best['prune.amount']} (run `{best['run']}`), "
        "validation PESQ "
        f"**{best[SELECT_BY]:.3f}**; its test PESQ: "
        + (f"{test_pesq:.3f}." if test_pesq is not None else "not logged."), "",
    ]
    if excluded:
        md += [f"Not considered for selection ({len(excluded)} run(s) without a `{SELECT_BY}` metric): "
               + ", ".join(f"`{r['run']}` (prune.amount = {r['prune.amount']})" for r in excluded) + ".", ""]
    md += ["![quality](sweep_quality.png)", "", "![cost](sweep_cost.png)", "",
           "Test-set plot, for information (never used for choosing):", "", "![pareto](sweep_pareto.png)", ""]
    files.write_text(out_dir / "sweep.md", "\n".join(md))

    tracking.setup(experiment)
    with mlflow.start_run(run_name=f"sweep-report-{len(rows)}pts") as run:
        mlflow.set_tags({"stage": "report", "dense_run_id": dense_run_id, "selected_by": VAL_PESQ,
                         "selected_run_id": best["run_id"]})
        for f in [out_dir / "sweep.md", out_dir / "sweep.csv", *figures]:
            mlflow.log_artifact(str(f), "sweep")
        logged = {"best_val_pesq": best[SELECT_BY], "selected_prune_amount": best["prune.amount"],
                  "selected_dense": float(best["variant"] == "dense"),
                  "runs_excluded_no_val_pesq": len(excluded)}
        for s in SETS:  # the selected run's own test results, for information; not a "best test" figure
            if best.get(f"{s}_pesq") is not None:
                logged[f"selected_{s}_pesq"] = best[f"{s}_pesq"]
        mlflow.log_metrics(in_section(SWEEP, logged))
        report_run = run.info.run_id
    summary: dict[str, Any] = {
        "runs": len(rows), "dense_run_id": dense_run_id, "report_run_id": report_run, "selected_by": SELECT_BY,
        "best": {k: best.get(k) for k in ("prune.method", "prune.amount", SELECT_BY, "test_pesq", "run_id")},
        "excluded_no_val_pesq": [r["run_id"] for r in excluded],
        "out_dir": str(out_dir),
    }
    if register:
        summary["registered"] = register_best(best["run_id"])
    return summary


def register_best(run_id: str, name: str = REGISTERED_MODEL) -> dict[str, Any]:
    """Register the model of run ``run_id`` as a new version of ``name``: the MLflow pyfunc that enhances
    audio (tracking/serving.py: the torch-free Enhancer around the run's ONNX export), which
    ``mlflow models serve -m models:/NAME/VERSION`` serves.

    The pyfunc is logged to the run from the ONNX model the export stage logged there (``onnx``; a
    diffusion model's predictive graph from the run's ``export/`` artifacts), once: a run that already
    has it (``enhancer``) is registered again as it is.
    """
    import mlflow

    from effifusion.tracking import serving

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(experiment_ids=[experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'", output_format="list")
    enhancers = [m for m in models if m.name == serving.LOGGED_NAME]
    if enhancers:
        model_uri = f"models:/{enhancers[0].model_id}"
    else:
        onnx = [m for m in models if m.name == "onnx"]  # the name export.log_to_mlflow gives it
        if not onnx:
            raise DataError(f"run {run_id} has no logged ONNX model (did the export stage run?)")
        model_uri = _log_enhancer_from_onnx(run_id, onnx[0])
    version = mlflow.register_model(model_uri, name)
    client.set_model_version_tag(name, version.version, "source_run_id", run_id)
    client.update_model_version(name, version.version, description=(
        "Speech enhancement (effifusion Enhancer, ONNX Runtime, no torch). Serve: mlflow models serve -m "
        f"models:/{name}/{version.version} --env-manager local; POST /invocations "
        '{"inputs": {"audio": [...], "sample_rate": 16000}} or {"inputs": {"wav_base64": "..."}} '
        "(docs/serving.md)"))
    return {"name": name, "version": int(version.version)}


def _log_enhancer_from_onnx(run_id: str, onnx_model: Any) -> str:
    """Log the serving pyfunc to run ``run_id`` around its logged ONNX model; its ``models:/`` URI."""
    import tempfile

    import mlflow

    from effifusion.runtime.onnx_model import onnx_session
    from effifusion.tracking import serving

    with tempfile.TemporaryDirectory(prefix="effifusion-register-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=onnx_model.artifact_location, dst_path=tmp))
        graphs = sorted(local.rglob("*.onnx"))
        if len(graphs) != 1:
            raise DataError(f"run {run_id}: its logged ONNX model holds {len(graphs)} .onnx files, expected 1")
        files = [graphs[0]]
        predictive = onnx_session(graphs[0], 1).get_modelmeta().custom_metadata_map.get("predictive_file")
        if predictive:  # a diffusion model: its predictive graph was logged beside export.json
            try:
                got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"export/{predictive}",
                                                          dst_path=str(Path(tmp) / "extra"))
            except mlflow.exceptions.MlflowException:
                raise DataError(f"run {run_id}: its predictive network export/{predictive} was not logged (rerun "
                                "the export stage: dvc repro -f export)") from None
            files.append(graphs[0].with_name(predictive))
            Path(got).replace(files[-1])
        with mlflow.start_run(run_id=run_id):
            info = serving.log_enhancer(files)
    return info.model_uri
