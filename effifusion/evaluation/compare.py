"""`effifusion compare`: the architectures side by side (quality, size, cost), read from the MLflow store.

    effifusion compare [--out reports/compare] [--experiment NAME] [--bench [--seconds 2]]

One row per architecture, preset and variant: the newest evaluated run of each (a run holding
``test/pesq``). Each evaluate stage logs into the run that made its model: evaluate_dense into the
train run (variant ``dense``), evaluate into the prune run (variant ``pruned``, with its
``prune.method`` and ``prune.amount``; ``prune.method: none`` makes no prune run, so a peer shows its
dense row only). The architecture is the run's ``model.arch`` param (params are logged flattened), the preset
its ``preset`` tag. Every value comes from the run or from a measurement made here; one that is
neither shows as "—" (empty in the CSV), never a guess:

- quality: the PyTorch model's means on the test and unseen-noise sets (``test/pesq``,
  ``test/csig`` ..., evaluation.evaluate.mlflow_metrics), the composites in both conventions:
  ``*_matlab`` (MLflow's plain ``test/csig``: Loizou's MATLAB compute_metrics) and ``*_published``
  (``test/csig_published``: the CMGAN/MP-SENet Python port, as papers' tables);
- ``val_pesq``: ``val/pesq``, the selected weights' PESQ on held-out training speakers;
- size: ``train/params_total`` and ``train/params_nonzero`` (the training stage's count of the model
  it wrote); ``gmac_per_s``: the architecture's analytic MACs for 1 s of audio (models/cost.py),
  computed from the run's ``model.*`` params (an architecture this checkout does not know: "—");
- cost: ``rtf_onnx_eval`` is the evaluate stage's ``rtf/onnx`` (``evaluate.rtf_seconds`` of input, 1
  thread, on the machine that evaluated); ``bench_*`` come from `effifusion bench`
  (inference/bench.py: ONNX Runtime, 1 thread, a torch-free child process) run by ``--bench`` on the
  run's logged ONNX model (else on the run's architecture with random weights: cost does not depend
  on them), or read back from the run's own ``bench/*`` metrics or the newest earlier compare run
  that benched the same run.

Nothing is selected or ranked by a test metric: rows are sorted by validation PESQ (highest first;
rows without it last, by architecture name). The Pareto plot's front is computed on test PESQ, and
its title says so: it is a picture for information, not a choice.

Outputs (``--out``, each file written atomically): compare.md, compare.csv, compare_pareto.png,
compare_quality.png; all logged, with the bench results (compare/bench.json), to an MLflow run of
stage ``compare``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from effifusion.core import files
from effifusion.core.config import read_params, repo_root
from effifusion.core.errors import DataError, EffiFusionError
from effifusion.tracking import figures
from effifusion.tracking import runs as tracking
from effifusion.tracking.names import BENCH, COMPARE, RTF, TEST, TEST_PESQ, TRAIN, UNSEEN, VAL_PESQ, in_section

SETS = (TEST, UNSEEN)
MISSING = "—"
CONVENTIONS = ("matlab", "published")
COMPOSITES = ("csig", "cbak", "covl")  # evaluation.metrics.COMPOSITES: the measures whose value depends on it
# column suffix -> the MLflow name inside a set's section (evaluation.evaluate.mlflow_metrics)
SET_METRICS = {"pesq": "pesq", **{f"{m}_matlab": m for m in COMPOSITES},
               **{f"{m}_published": f"{m}_published" for m in COMPOSITES}, "stoi": "stoi", "ssnr": "ssnr",
               "estoi": "estoi", "si_sdr": "si_sdr", "si_sir": "si_sir", "si_sar": "si_sar"}
BENCH_KEYS = {"bench_rtf_onnx": "rtf", "bench_peak_rss_mib": "peak_rss_mib",  # column -> bench row key
              "bench_gmac_per_s": "gmac_per_s_audio"}
ID_COLUMNS = ["arch", "preset", "variant", "prune_method", "prune_amount", "corpus"]
COST_COLUMNS = ["params_total", "params_nonzero", "gmac_per_s", "val_pesq", "rtf_onnx_eval",
                *BENCH_KEYS]
SORTED_BY = "val_pesq"  # never a test metric
BENCH_SECONDS = 2.0
BENCH_THREADS = 1
BENCH_FILE = "bench.json"  # in the compare run's artifacts, under compare/
PREVIOUS_COMPARE_RUNS = 20  # earlier compare runs searched for bench results of the same run
DIGITS = {"pesq": 3, "csig": 3, "cbak": 3, "covl": 3, "stoi": 3, "estoi": 3, "ssnr": 2, "si_sdr": 2,
          "si_sir": 2, "si_sar": 2, "val_pesq": 3, "rtf": 3, "gmac": 2, "mib": 0}


def columns() -> list[str]:
    """The CSV's columns, in order (the Markdown splits them into a cost table and one table per set)."""
    return [*ID_COLUMNS, *COST_COLUMNS, *[f"{s}_{m}" for s in SETS for m in SET_METRICS], "run", "run_id"]


# ---------------------------------------------------------------------------------------------
# Runs and rows


def _arch(run: Any) -> str | None:
    return run.data.params.get("model.arch") or run.data.tags.get("arch") or None


def _variant(run: Any) -> str:
    """dense (the train run, scored by evaluate_dense) or pruned (the prune run, scored by evaluate)."""
    return "dense" if run.data.tags.get("stage") == "train" else "pruned"


def _preset(run: Any) -> str | None:
    return run.data.tags.get("preset") or run.data.params.get("preset") or None


def evaluated_runs(experiment: str) -> list[Any]:
    """The newest evaluated run (one with ``test/pesq``) of each (architecture, preset), by end time."""
    import mlflow

    exp_id = tracking.setup(experiment)
    runs = mlflow.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.end_time DESC"], output_format="list")
    runs = [r for r in runs if TEST_PESQ in r.data.metrics and r.data.tags.get("stage") != COMPARE]
    if not runs:
        raise DataError(f"MLflow experiment {experiment!r} at {tracking.tracking_uri()} has no evaluated runs "
                        f"(none has {TEST_PESQ!r}): run the pipeline (dvc repro) for each architecture first")
    latest: dict[tuple[str, str], Any] = {}
    for r in runs:  # newest first: the first run seen of each (arch, preset) wins
        latest.setdefault((_arch(r) or "", _preset(r) or "", _variant(r)), r)
    return list(latest.values())


def _param_value(text: str) -> Any:
    """A flattened MLflow param back to its YAML value ("16" -> 16, "True" -> True, "[1, 2]" -> [1, 2])."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def model_config(run: Any) -> tuple[dict[str, Any], int]:
    """The run's ``model`` section and sample rate, from its flattened params."""
    params = run.data.params
    cfg: dict[str, Any] = {}
    for key, value in params.items():
        if not key.startswith("model."):
            continue
        *parents, leaf = key[len("model."):].split(".")  # nested sections (model.sampler.steps) unflattened
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _param_value(value)
    return cfg, int(_param_value(params.get("audio.sample_rate", "16000")))


def build_from_params(run: Any) -> tuple[Any | None, str]:
    """(the run's architecture built with random weights, "") or (None, why not)."""
    cfg, sr = model_config(run)
    if not cfg:
        return None, "the run has no model.* params"
    try:
        import torch

        from effifusion.models.registry import build_model, check_model_config

        check_model_config(cfg)
        torch.manual_seed(0)
        return build_model(cfg, sr).eval(), ""
    except (EffiFusionError, TypeError, ValueError, KeyError) as exc:
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def analytic_gmac_per_s(model: Any) -> float:
    """GMAC for 1 s of audio (models/cost.py; what the evaluate stage's summary reports)."""
    from effifusion.models.cost import frames_for

    return round(model.macs(frames_for(1.0, model.sample_rate, model.frontend.hop_length))["total"] / 1e9, 4)


def _count(metrics: dict[str, float], key: str) -> int | None:
    return int(metrics[key]) if key in metrics and math.isfinite(metrics[key]) else None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def compare_rows(runs: Sequence[Any], models: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per run, flat column names (``columns()``), sorted by validation PESQ then arch.

    ``models``: run id -> the architecture built from its params (or None), for the MAC count.
    """
    rows = []
    for r in runs:
        m, params, tags = r.data.metrics, r.data.params, r.data.tags
        model = (models or {}).get(r.info.run_id)
        row: dict[str, Any] = {
            "arch": _arch(r), "preset": _preset(r), "variant": _variant(r),
            "prune_method": None if _variant(r) == "dense" else params.get("prune.method", "l1_unstructured"),
            "prune_amount": None if _variant(r) == "dense" else _finite(_param_value(params.get("prune.amount", ""))),
            "corpus": params.get("corpus.name"),
            "params_total": _count(m, f"{TRAIN}/params_total"),
            "params_nonzero": _count(m, f"{TRAIN}/params_nonzero"),
            "gmac_per_s": analytic_gmac_per_s(model) if model is not None else None,
            "val_pesq": _finite(m.get(VAL_PESQ)),
            "rtf_onnx_eval": _finite(m.get(f"{RTF}/onnx")),
            **{col: _finite(m.get(f"{BENCH}/{key}")) for col, key in BENCH_KEYS.items()},
            "run": r.info.run_name, "run_id": r.info.run_id,
            "host": tags.get("host"), "protocol": tags.get("evaluation_protocol"),
            "rtf_seconds": params.get("evaluate.rtf_seconds"),
            "bench_source": "the run's bench/* metrics" if f"{BENCH}/rtf" in m else None,
        }
        for s in SETS:
            for col, name in SET_METRICS.items():
                row[f"{s}_{col}"] = _finite(m.get(f"{s}/{name}"))
        rows.append(row)
    return sort_rows(rows)


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """By validation PESQ, highest first, then rows without it by arch name; never by a test metric."""
    return sorted(rows, key=lambda r: (r[SORTED_BY] is None, -(r[SORTED_BY] or 0.0), r["arch"] or "",
                                       r["preset"] or ""))


# ---------------------------------------------------------------------------------------------
# Pareto front


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the points no other point dominates (cost no higher and quality no lower, one of them
    strictly), sorted by cost; points with a missing coordinate are left out."""
    known = [(i, float(c), float(q)) for i, (c, q) in enumerate(points)
             if c is not None and q is not None and math.isfinite(c) and math.isfinite(q)]
    front = [i for i, c, q in known
             if not any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for _, c2, q2 in known)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _label(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    arch = row["arch"] or MISSING
    same_arch = [r for r in rows if r["arch"] == row["arch"]]
    return f"{arch} ({row['preset']})" if len(same_arch) > 1 and row["preset"] else arch


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test PESQ against GMAC/s and against parameters, the Pareto front connected and labelled."""
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in zip(axes, ("gmac_per_s", "params_total"),
                               ("GMAC per second of audio (analytic)", "parameters (total)")):
        points = [(r[key], r[f"{TEST}_pesq"]) for r in rows]
        front = pareto_front(points)
        shown = [i for i, (c, q) in enumerate(points) if c is not None and q is not None]
        if not shown:
            ax.text(0.5, 0.5, f"no row has both {key} and test PESQ", ha="center", va="center",
                    transform=ax.transAxes)
        for i in shown:
            on_front = i in front
            ax.plot(points[i][0], points[i][1], "o" if on_front else "X", color="C0" if on_front else "0.45",
                    ms=8, zorder=3)
            ax.annotate(_label(rows[i], rows) + ("" if on_front else " (dominated)"), points[i],
                        textcoords="offset points", xytext=(5, 5), fontsize=8,
                        color="black" if on_front else "0.4")
        if front:
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="C0", lw=1.2,
                    label="Pareto front")
            ax.legend(loc="best", fontsize=8)
        ax.margins(0.2)
        if key == "params_total" and shown:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test PESQ (wide-band)")
        ax.grid(alpha=0.3)
    fig.suptitle("Quality against cost; Pareto front computed on TEST PESQ (for information, not used "
                 "to select a model)", fontsize=10)
    return figures.save_figure(fig, path)


def metric_label(col: str) -> str:
    """A set metric column's name for a plot, convention dropped: csig_matlab -> CSIG, si_sdr -> SI-SDR."""
    for convention in CONVENTIONS:
        col = col.removesuffix(f"_{convention}")
    return col.upper().replace("_", "-")


def plot_quality(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: per set, PESQ and the composites (both conventions), STOI and ESTOI, SSNR, SI-SDR,
    SI-SIR and SI-SAR per architecture."""
    import numpy as np

    plt = figures.pyplot()
    panels = [("PESQ, CSIG, CBAK, COVL (MATLAB convention)", ["pesq", *[f"{m}_matlab" for m in COMPOSITES]]),
              ("CSIG, CBAK, COVL (published convention)", [f"{m}_published" for m in COMPOSITES]),
              ("STOI, ESTOI", ["stoi", "estoi"]),
              ("SSNR, SI-SDR, SI-SIR, SI-SAR (dB)", ["ssnr", "si_sdr", "si_sir", "si_sar"])]
    fig, axes = plt.subplots(len(SETS), len(panels), figsize=(4.2 * len(panels), 3.4 * len(SETS)),
                             gridspec_kw={"width_ratios": [4, 3, 2, 4]}, squeeze=False)
    width = 0.8 / max(len(rows), 1)
    for row_axes, s in zip(axes, SETS):
        for ax, (title, keys) in zip(row_axes, panels):
            x = np.arange(len(keys))
            for j, r in enumerate(rows):
                ys = [r[f"{s}_{k}"] for k in keys]
                ax.bar(x + (j - (len(rows) - 1) / 2) * width, [np.nan if y is None else y for y in ys], width,
                       label=_label(r, rows), color=f"C{j % 10}")
            ax.set_xticks(x)
            ax.set_xticklabels([metric_label(k) for k in keys])
            ax.set_title(f"{s}: {title}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Quality by architecture (PyTorch model, means over each set; missing values: no bar)",
                 fontsize=10)
    return figures.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Bench


def onnx_artifact(run: Any, dst: Path) -> Path | None:
    """The ONNX file the export stage logged in ``run`` (logged model "onnx"), downloaded to ``dst``."""
    import mlflow

    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'",
                                         output_format="list")
    models = sorted((m for m in models if m.name == "onnx"), key=lambda m: m.creation_timestamp or 0)
    if not models:
        return None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=models[-1].artifact_location,
                                                     dst_path=str(dst)))
    found = sorted(local.rglob("*.onnx"))
    return found[0] if found else None


def bench_run(run: Any, model: Any, seconds: float = BENCH_SECONDS, threads: int = BENCH_THREADS
              ) -> dict[str, Any]:
    """`effifusion bench` (ONNX, ``threads``) on the run's logged ONNX model, or, when the run has none,
    on its architecture exported with random weights; ``model`` (built from the run's params) gives
    the MAC and parameter counts. Returns bench's row plus ``source``."""
    from effifusion.inference import bench
    from effifusion.models.registry import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="effifusion-compare-") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / bench.BACKENDS["pytorch"]
        save_checkpoint(ckpt, model)
        onnx_path = onnx_artifact(run, tmp / "artifact")
        source = "the run's ONNX model (MLflow logged model \"onnx\")"
        if onnx_path is None:
            from effifusion.core.settings import AudioConfig, ExportConfig
            from effifusion.inference.export import export_onnx

            opset = _param_value(run.data.params.get("export.opset", "18"))
            report = export_onnx(ckpt, tmp / "onnx", ExportConfig(opset, (bench.PARITY_S,), 1e-4),
                                 AudioConfig(model.sample_rate))
            onnx_path = Path(report["onnx_file"])
            source = "the run's architecture exported with random weights (the run logged no ONNX model)"
        prepared = bench.Prepared(run.info.run_name, model, ckpt, onnx_path)
        row = bench.measure(prepared, "onnx", seconds, threads)
    return {**row, "source": source}


def previous_bench(experiment_id: str, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Bench rows of ``run_ids`` recorded by earlier compare runs (the newest that benched each)."""
    import mlflow

    found: dict[str, dict[str, Any]] = {}
    earlier = mlflow.search_runs([experiment_id], filter_string=f"tags.stage = '{COMPARE}'",
                                 order_by=["attributes.start_time DESC"], max_results=PREVIOUS_COMPARE_RUNS,
                                 output_format="list")
    for c in earlier:
        if c.data.tags.get("benched") != "true":
            continue
        try:
            saved = mlflow.artifacts.load_dict(f"{c.info.artifact_uri}/{COMPARE}/{BENCH_FILE}")
        except Exception:  # noqa: BLE001 - an unreadable old artifact only means no reused result
            continue
        for run_id, row in saved.get("rows", {}).items():
            if run_id in run_ids and run_id not in found:
                found[run_id] = {**row, "source": f"compare run {c.info.run_id}: {row.get('source', '')}"}
    return found


def apply_bench(row: dict[str, Any], result: dict[str, Any]) -> None:
    for col, key in BENCH_KEYS.items():
        row[col] = _finite(result.get(key))
    row["bench_source"] = result.get("source")
    row["bench_platform"] = (result.get("platform") or {}).get("cpu")
    row["bench_seconds"] = result.get("seconds")
    row["bench_threads"] = result.get("threads")


# ---------------------------------------------------------------------------------------------
# Report


def _digits(col: str) -> int:
    for key, n in DIGITS.items():
        if key in col:
            return n
    return 3


def cell(value: Any, col: str) -> str:
    """A table cell: "—" for a missing value, thousands separators for counts, fixed decimals."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{_digits(col)}f}"


def markdown_tables(rows: list[dict[str, Any]]) -> list[str]:
    cost_cols = [*ID_COLUMNS, *COST_COLUMNS]
    out = ["## Size and cost", "", _md(rows, cost_cols)]
    for s in SETS:
        title = "Test set" if s == TEST else "Unseen noises"
        out += [f"## {title} (`{s}/…`): quality of the PyTorch model", "",
                _md(rows, ["arch", "preset", *[f"{s}_{m}" for m in SET_METRICS]])]
    return out


def _md(rows: list[dict[str, Any]], cols: list[str]) -> str:
    return files.markdown_table([{c: cell(r.get(c), c) for c in cols} for r in rows], cols)


def caption(rows: list[dict[str, Any]], experiment: str) -> list[str]:
    corpora = sorted({r["corpus"] for r in rows if r["corpus"]})
    lines = [
        f"{len(rows)} architecture(s) from MLflow experiment `{experiment}`: for each architecture and "
        "preset, the newest evaluated run (a run with `test/pesq`). Rows are sorted by validation PESQ "
        "(`val_pesq`: held-out training speakers; highest first, rows without it last, by arch name). "
        "No row is selected or ranked by a test metric: test and unseen-noise results are shown for "
        "information.", "",
        "Data: " + (", ".join(f"corpus `{c}`" + (" (**demo corpus**: built-in synthetic speech and noise; the "
                                                  "numbers show the pipeline runs, not how the models compare "
                                                  "on real speech)" if c == "demo" else "") for c in corpora)
                    if corpora else f"corpus not logged ({MISSING})")
        + (". Rows come from different corpora: compare only rows of the same corpus." if len(corpora) > 1
           else "."),
        "", "Quality: means over each set of the PyTorch model's output, scored by the evaluate stage"
        + (f" ({'; '.join(sorted({r['protocol'] for r in rows if r['protocol']}))})"
           if any(r["protocol"] for r in rows) else "") + ". PESQ is wide-band; STOI and ESTOI in [0, 1]; "
        "SSNR, SI-SDR, SI-SIR and SI-SAR in dB. "
        "CSIG, CBAK, COVL appear in both conventions, named in the columns: `*_matlab` = Loizou's MATLAB "
        "compute_metrics (MLflow `test/csig`, the project's default), `*_published` = the CMGAN/MP-SENet "
        "Python port on float samples (MLflow `test/csig_published`; about 0.08-0.09 higher, the convention "
        "of published VoiceBank+DEMAND tables: compare those with papers).", "",
        "Size and cost: `params_total` / `params_nonzero` as the training stage counted the model it wrote "
        "(`train/params_*`); `gmac_per_s` is the architecture's analytic MAC count for 1 s of audio "
        "(models/cost.py, from the run's `model.*` params); `rtf_onnx_eval` is the evaluate stage's ONNX "
        "real-time factor (`rtf/onnx`: compute s per audio s, 1 thread"
        + (f", {', '.join(sorted({str(r['rtf_seconds']) for r in rows if r['rtf_seconds']}))} s input" if any(
            r["rtf_seconds"] for r in rows) else "")
        + (f", measured on host(s) {', '.join(f'`{h}`' for h in sorted({r['host'] for r in rows if r['host']}))}"
           if any(r["host"] for r in rows) else "") + ").",
    ]
    benched = [r for r in rows if r.get("bench_source")]
    if benched:
        platforms = sorted({str(r.get("bench_platform")) for r in benched if r.get("bench_platform")})
        setups = sorted({f"{r.get('bench_seconds')} s, {r.get('bench_threads')} thread(s)" for r in benched
                         if r.get("bench_seconds") is not None})
        lines += ["", "`bench_*`: `effifusion bench` (ONNX Runtime, CPU; "
                  + ("; ".join(setups) or "setup not recorded") + "): real-time factor, peak resident memory "
                  "(MiB) of the measuring process, GMAC per audio second at that length"
                  + (f", on {'; '.join(platforms)}" if platforms else "") + ". Source per row: "
                  + "; ".join(f"{r['arch'] or MISSING}: {r['bench_source']}" for r in benched) + "."]
    else:
        lines += ["", f"`bench_*`: not measured ({MISSING}); `effifusion compare --bench` runs "
                  "`effifusion bench` on each row's model."]
    lines += ["", f"Missing values are shown as {MISSING} (empty in compare.csv): not logged, or not computable "
              "here; none is estimated."]
    return lines


def compare_report(out_dir: str | Path = "reports/compare", experiment: str | None = None, bench: bool = False,
                   seconds: Any = BENCH_SECONDS) -> dict[str, Any]:
    """Write compare.md, compare.csv and the PNGs to ``out_dir``; log them as an MLflow run (stage
    ``compare``); with ``bench``, run `effifusion bench` on every row first and log its results."""
    import mlflow

    from effifusion.inference.bench import check_args

    out_dir = Path(out_dir)
    if bench:
        seconds, _, _ = check_args(seconds, "onnx", BENCH_THREADS)  # a bad --seconds: one line, before any work
    files.check_writable_dir(out_dir, "--out folder")
    experiment = experiment or read_params(repo_root() / "params.yaml")["mlflow"]["experiment"]
    runs = evaluated_runs(experiment)
    models, why_not = {}, {}
    for r in runs:
        models[r.info.run_id], why_not[r.info.run_id] = build_from_params(r)
    rows = compare_rows(runs, models)
    by_id = {r.info.run_id: r for r in runs}

    bench_results: dict[str, dict[str, Any]] = {}
    bench_notes: list[str] = []
    if bench:
        for row in rows:
            model = models[row["run_id"]]
            if model is None:
                bench_notes.append(f"{row['arch'] or MISSING}: not benched ({why_not[row['run_id']]})")
                continue
            result = bench_run(by_id[row["run_id"]], model, seconds, BENCH_THREADS)
            bench_results[row["run_id"]] = result
            apply_bench(row, result)
    missing = [row["run_id"] for row in rows if row["bench_rtf_onnx"] is None]
    if missing:
        for run_id, result in previous_bench(runs[0].info.experiment_id, missing).items():
            apply_bench(next(r for r in rows if r["run_id"] == run_id), result)

    cols = columns()
    files.write_csv(out_dir / "compare.csv", rows, cols)
    plots = [plot_pareto(rows, out_dir / "compare_pareto.png"),
             plot_quality(rows, out_dir / "compare_quality.png")]
    md = ["# Architectures compared", "", *caption(rows, experiment), "", *markdown_tables(rows)]
    if bench_notes:
        md += ["Not benched: " + "; ".join(bench_notes) + ".", ""]
    md += ["![quality against cost](compare_pareto.png)", "",
           "![quality by architecture](compare_quality.png)", ""]
    files.write_text(out_dir / "compare.md", "\n".join(md))

    tracking.setup(experiment)
    with mlflow.start_run(run_name=f"compare-{len(rows)}archs") as run:
        mlflow.set_tags({"stage": COMPARE, "sorted_by": VAL_PESQ, "benched": str(bool(bench_results)).lower(),
                         "compared_run_ids": ",".join(r["run_id"] for r in rows),
                         "compared_archs": ",".join(r["arch"] or MISSING for r in rows),
                         **tracking.process_tags()})
        logged = {"rows": len(rows), "rows_benched": len(bench_results)}
        for row in rows:
            if row["run_id"] in bench_results:
                key = f"{row['arch'] or 'unknown'}-{row['preset'] or 'unknown'}"
                logged.update({f"{key}/{name}": row[col] for col, name in BENCH_KEYS.items()
                               if row[col] is not None})
        mlflow.log_metrics({**in_section(COMPARE, {k: v for k, v in logged.items() if "/" not in k}),
                            **in_section(BENCH, {k: v for k, v in logged.items() if "/" in k})})
        if bench_results:
            mlflow.log_dict({"seconds": seconds, "threads": BENCH_THREADS, "rows": bench_results},
                            f"{COMPARE}/{BENCH_FILE}")
        for f in [out_dir / "compare.md", out_dir / "compare.csv", *plots]:
            mlflow.log_artifact(str(f), COMPARE)
        compare_run = run.info.run_id
    return {"rows": [{c: r.get(c) for c in ("arch", "preset", "val_pesq", "test_pesq", "run_id")} for r in rows],
            "sorted_by": SORTED_BY, "benched": sorted(bench_results), "compare_run_id": compare_run,
            "out_dir": str(out_dir)}
