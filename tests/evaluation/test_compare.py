"""`effifusion compare`: one row per architecture from the MLflow store, never ranked by a test metric."""

from __future__ import annotations

import mlflow
import pytest

from effifusion.core.errors import DataError
from effifusion.evaluation import compare
from effifusion.evaluation.evaluate import ALL_METRICS, SETS, SYSTEMS, mlflow_metrics, summarize_scores
from effifusion.tracking import runs as tracking
from effifusion.tracking.names import BENCH, COMPARE, TEST_PESQ, VAL_PESQ, training_metrics
from helpers import tiny_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPERIMENT = "compare-test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # lock and artifacts in tmp_path
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    previous = mlflow.get_tracking_uri()
    yield mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(previous)


def _scores(quality: dict[str, float]) -> list[dict]:
    """Per-utterance rows as evaluate.score_all gives them: two files per set whose PyTorch mean is
    ``quality[metric]`` (unseen: 0.2 lower), the noisy input lower, ONNX a hair off."""
    rows = []
    for set_name in SETS:
        for system in SYSTEMS:
            for utt, offset in (("u1", -0.05), ("u2", 0.05)):
                shift = ({"noisy": -1.0, "pytorch": 0.0, "onnx": 0.001}[system]
                         - (0.2 if set_name == "unseen" else 0))
                rows.append({"set": set_name, "system": system, "utt": utt,
                             **{m: quality[m] + shift + offset for m in ALL_METRICS}})
    return rows


def log_pipeline_run(arch: str, preset: str, val_pesq: float | None, quality: dict[str, float],
                     params_total: int, params_nonzero: int, rtf_onnx: float = 0.25, stage: str = "prune") -> str:
    """A prune run as the stages log it: all params flattened (model.arch ...), training metrics
    (train/params_total, val/pesq), then the evaluate stage's test/*, unseen/* and rtf/* in the same run."""
    params = tiny_params(model__arch=arch)
    params["preset"] = preset
    params["mlflow"]["experiment"] = EXPERIMENT
    with tracking.start_run(stage, params) as run:
        train = {"params_total": params_total, "params_nonzero": params_nonzero, "steps": 10}
        if val_pesq is not None:
            train["val_pesq"] = val_pesq
        mlflow.log_metrics(training_metrics(train), step=10)
        metrics = {**summarize_scores(_scores(quality)), "rtf": {"pytorch": 0.5, "onnx": rtf_onnx}}
        mlflow.log_metrics(mlflow_metrics(metrics))
        mlflow.set_tag("evaluation_protocol", "whole utterance")
        return run.info.run_id


def quality(pesq: float) -> dict[str, float]:
    q = {"pesq": pesq, "csig": 3.0, "cbak": 2.5, "covl": 2.7, "ssnr": 8.0, "stoi": 0.90, "estoi": 0.75,
         "si_sdr": 12.3, "si_sir": 20.5, "si_sar": 14.1}
    q.update({f"{m}_published": q[m] + 0.09 for m in ("csig", "cbak", "covl")})
    return q


def test_pareto_front_leaves_dominated_points_off():
    points = [(1.0, 2.0), (2.0, 3.0), (3.0, 2.5), (None, 4.0), (1.0, 1.5), (4.0, 3.2), (4.5, 3.2)]
    # (3, 2.5) is dominated by (2, 3); (1, 1.5) by (1, 2); (4.5, 3.2) by (4, 3.2); None is not plotted
    assert compare.pareto_front(points) == [0, 1, 5]
    assert compare.pareto_front([(1.0, 2.0), (1.0, 2.0)]) == [0, 1]  # equal points dominate neither
    assert compare.pareto_front([]) == []


def test_compare_table_plots_and_run(store, tmp_path):
    old = log_pipeline_run("effifusion_gan", "demo", 1.5, quality(1.1), 9000, 9000)  # superseded below
    gan = log_pipeline_run("effifusion_gan", "demo", 2.0, quality(2.9), 30000, 21000, rtf_onnx=0.12)
    muse = log_pipeline_run("muse", "demo", 2.4, quality(2.6), 50000, 50000, rtf_onnx=0.31)
    with tracking.start_run("train", {**tiny_params(), "mlflow": {"experiment": EXPERIMENT}}):
        mlflow.log_metrics(training_metrics({"params_total": 1, "val_pesq": 3.9}))  # never evaluated: no row

    out = tmp_path / "reports" / "compare"
    summary = compare.compare_report(out_dir=out, experiment=EXPERIMENT)
    # sorted by validation PESQ (muse 2.4 > gan 2.0), though gan's test PESQ is the higher one
    assert [r["arch"] for r in summary["rows"]] == ["muse", "effifusion_gan"]
    assert [r["run_id"] for r in summary["rows"]] == [muse, gan] and old not in str(summary)

    rows = {r["arch"]: r for r in compare.compare_rows(compare.evaluated_runs(EXPERIMENT))}
    g, m = rows["effifusion_gan"], rows["muse"]
    assert g["test_pesq"] == pytest.approx(2.9) and g["unseen_pesq"] == pytest.approx(2.7)
    assert g["test_csig_matlab"] == pytest.approx(3.0) and g["test_csig_published"] == pytest.approx(3.09)
    assert g["test_stoi"] == pytest.approx(0.9) and g["test_ssnr"] == pytest.approx(8.0)
    assert g["test_estoi"] == pytest.approx(0.75) and g["unseen_si_sdr"] == pytest.approx(12.1)
    assert g["test_si_sir"] == pytest.approx(20.5) and g["unseen_si_sar"] == pytest.approx(13.9)
    assert g["val_pesq"] == pytest.approx(2.0) and g["rtf_onnx_eval"] == pytest.approx(0.12)
    assert (g["params_total"], g["params_nonzero"]) == (30000, 21000) and g["preset"] == "demo"
    assert g["corpus"] == "demo"
    assert m["test_pesq"] == pytest.approx(2.6) and m["val_pesq"] == pytest.approx(2.4)
    assert m["bench_rtf_onnx"] is None

    csv_lines = (out / "compare.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == compare.columns() and len(csv_lines) == 3
    # muse's GMAC: not in this registry -> empty
    assert csv_lines[1].startswith("muse,demo,pruned,l1_unstructured,0.3,demo,50000,50000,,")
    gan_csv = dict(zip(csv_lines[0].split(","), csv_lines[2].split(",")))
    assert float(gan_csv["gmac_per_s"]) > 0  # analytic, from the run's model.* params
    assert gan_csv["test_covl_published"] == "2.79" and gan_csv["bench_rtf_onnx"] == ""
    assert gan_csv["test_estoi"] == "0.75" and gan_csv["test_si_sdr"] == "12.3"
    assert gan_csv["test_si_sir"] == "20.5" and gan_csv["test_si_sar"] == "14.1"

    md = (out / "compare.md").read_text()
    assert "demo corpus" in md and "`*_matlab`" in md and "`*_published`" in md
    assert "No row is selected or ranked by a test metric" in md
    assert "STOI and ESTOI in [0, 1]; SSNR, SI-SDR, SI-SIR and SI-SAR in dB" in md
    gan_test = [line for line in md.splitlines() if line.startswith("| effifusion_gan | demo |")][1]
    assert gan_test.endswith("| 0.900 | 8.00 | 0.750 | 12.30 | 20.50 | 14.10 |")  # ESTOI 3 decimals, dB 2
    muse_cost = next(line for line in md.splitlines() if line.startswith("| muse | demo | pruned |"))
    assert "| 50,000 | 50,000 | — | 2.400 | 0.310 | — | — | — |" in muse_cost
    for name in ("compare_pareto.png", "compare_quality.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert compare.figures.pyplot().imread(str(out / name)).ndim == 3  # decodes

    client = mlflow.MlflowClient()
    run = client.get_run(summary["compare_run_id"])
    assert run.data.tags["stage"] == COMPARE and run.data.tags["sorted_by"] == VAL_PESQ
    assert run.data.metrics[f"{COMPARE}/rows"] == 2
    logged = {f.path for f in client.list_artifacts(run.info.run_id, COMPARE)}
    assert {f"{COMPARE}/{n}" for n in ("compare.md", "compare.csv", "compare_pareto.png",
                                       "compare_quality.png")} <= logged
    assert TEST_PESQ not in run.data.metrics  # the compare run is not an evaluated run
    assert [r["arch"] for r in compare.compare_report(out, EXPERIMENT)["rows"]] == ["muse", "effifusion_gan"]


def test_bench_results_are_logged_and_read_back(store, tmp_path, monkeypatch):
    gan = log_pipeline_run("effifusion_gan", "demo", 2.0, quality(2.9), 30000, 21000)
    log_pipeline_run("muse", "demo", None, quality(2.6), 50000, 50000)
    calls = []

    def fake_bench(run, model, seconds, threads):  # the real one exports and times in a child (~20 s)
        calls.append((run.info.run_id, seconds, threads))
        return {"rtf": 0.2, "peak_rss_mib": 123.0, "gmac_per_s_audio": 0.5, "seconds": seconds, "threads": threads,
                "platform": {"cpu": "Test CPU, 2 cores available"}, "source": "test"}

    monkeypatch.setattr(compare, "bench_run", fake_bench)
    out = tmp_path / "cmp"
    summary = compare.compare_report(out, EXPERIMENT, bench=True, seconds="2")
    assert calls == [(gan, 2.0, 1)]  # muse is not in this checkout's registry: not benched, said so
    md = (out / "compare.md").read_text()
    assert "Not benched: muse" in md and "Test CPU, 2 cores available" in md
    # no val PESQ for muse: it sorts after the row that has one
    assert [r["arch"] for r in summary["rows"]] == ["effifusion_gan", "muse"]
    metrics = mlflow.MlflowClient().get_run(summary["compare_run_id"]).data.metrics
    assert metrics[f"{BENCH}/effifusion_gan-demo/rtf"] == pytest.approx(0.2)
    assert metrics[f"{BENCH}/effifusion_gan-demo/peak_rss_mib"] == pytest.approx(123.0)

    again = compare.compare_report(tmp_path / "cmp2", EXPERIMENT)  # no --bench: the results are read back
    assert again["benched"] == []
    lines = (tmp_path / "cmp2" / "compare.csv").read_text().splitlines()
    line = next(r for r in lines if r.startswith("effifusion_gan"))
    assert ",0.2,123.0,0.5," in line
    assert f"compare run {summary['compare_run_id']}" in (tmp_path / "cmp2" / "compare.md").read_text()


def test_empty_store_is_one_line_naming_the_experiment(store, tmp_path, capsys):
    with pytest.raises(DataError, match="'nothing-here'") as info:
        compare.compare_report(tmp_path / "out", "nothing-here")
    assert "\n" not in str(info.value)

    from effifusion.cli import main

    assert main(["compare", "--experiment", "nothing-here", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("effifusion compare: error:") and "nothing-here" in err and "\n" not in err


def test_metric_labels_drop_the_convention_only():
    labels = [compare.metric_label(k) for k in compare.SET_METRICS]
    assert labels == ["PESQ", *["CSIG", "CBAK", "COVL"] * 2, "STOI", "SSNR", "ESTOI", "SI-SDR", "SI-SIR",
                      "SI-SAR"]
    assert compare.cell(12.3456, "test_si_sdr") == "12.35" and compare.cell(0.75, "unseen_estoi") == "0.750"
    assert compare.cell(20.456, "test_si_sir") == "20.46" and compare.cell(-3.0, "unseen_si_sar") == "-3.00"


def test_nested_model_params_are_unflattened():
    """A diffusion model's nested sections (model.sampler.steps) rebuild from MLflow's flat params."""
    from types import SimpleNamespace

    from effifusion.core.config import flatten
    from effifusion.evaluation.compare import analytic_gmac_per_s, build_from_params, model_config
    from effifusion.models.sgmse.model import gp_sgmse_config

    cfg = {**gp_sgmse_config(), "nf": 8, "ch_mult": [1, 2, 2], "attn_resolutions": [64]}
    params = {f"model.{k}": str(v).replace("'", "") if not isinstance(v, list) else str(v)
              for k, v in flatten(cfg).items()}
    run = SimpleNamespace(data=SimpleNamespace(params={**params, "audio.sample_rate": "16000"}))
    assert model_config(run)[0]["sampler"]["steps"] == 30
    model, why = build_from_params(run)
    assert why == "" and analytic_gmac_per_s(model) > 0


def test_dense_and_pruned_rows_per_architecture(store, tmp_path):
    """evaluate_dense scores into the train run, evaluate into the prune run: one row each."""
    dense = log_pipeline_run("effifusion_gan", "demo", 2.1, quality(3.0), 30000, 30000, stage="train")
    pruned = log_pipeline_run("effifusion_gan", "demo", 2.0, quality(2.9), 30000, 21000)
    rows = compare.compare_rows(compare.evaluated_runs(EXPERIMENT))
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == {"dense", "pruned"} and len(rows) == 2
    assert by_variant["dense"]["run_id"] == dense and by_variant["pruned"]["run_id"] == pruned
    assert by_variant["dense"]["prune_method"] is None and by_variant["dense"]["params_nonzero"] == 30000
    assert by_variant["pruned"]["prune_method"] == "l1_unstructured"
    assert by_variant["pruned"]["prune_amount"] == pytest.approx(0.3)
    assert by_variant["pruned"]["params_nonzero"] == 21000
