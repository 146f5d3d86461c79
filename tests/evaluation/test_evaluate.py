"""Stage `evaluate` on a tiny world: 4 real test pairs, 4 unseen mixtures, a random 8-channel generator.

The world (manifests laid out as stages prepare / mix_unseen write them, both models, an MLflow
store with the prune run to resume) is built and evaluated once per module; the tests then check
the outputs against independent computations.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from effifusion.core.config import load_params
from effifusion.core.errors import ConfigError, DataError
from effifusion.core.settings import parse_params
from effifusion.data.mixing import snr_tag
from effifusion.evaluation import evaluate as ev
from effifusion.inference.quantize import quantize_int8
from effifusion.metrics.quality import METRICS, score_pair
from helpers import ROOT, fixtures_or_skip, synthetic_speech

TEST_UTTS = ["p232_052", "p232_170", "p257_054", "p257_143"]  # the four shortest fixture pairs (2.1-2.5 s)
UNSEEN = [("p257_143", "NPARK", 10.0), ("p232_170", "NPARK", 0.0), ("p232_052", "OHALLWAY", 10.0),
          ("p257_054", "OHALLWAY", 0.0)]
UNSEEN_UTTS = [f"{src}_{env}_{snr_tag(snr)}" for src, env, snr in UNSEEN]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _params() -> dict:
    params = load_params(ROOT / "params.yaml")
    params["model"] = {**params["model"], "channels": 8, "num_tsblocks": 1}
    params["evaluate"] = {"num_spectrograms": 2, "rtf_seconds": 0.5}
    params["runtime"].update(evaluate_workers=2, evaluate_device="cpu")
    params["mlflow"] = {"experiment": "test-evaluate"}
    return params


def _unseen_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Stand-ins for the DEMAND recordings: park rumble (brown noise), hallway hum with footstep clicks."""
    if kind == "NPARK":
        brown = np.cumsum(rng.standard_normal(n))
        return (brown - brown.mean()) / brown.std() + 0.1 * rng.standard_normal(n)
    t = np.arange(n) / 16000
    clicks = (rng.random(n) < 0.001) * rng.standard_normal(n) * 20
    return np.sin(2 * np.pi * 120 * t) + 0.3 * rng.standard_normal(n) + clicks


def build_world(root: Path, voicebank: Path, pruned: dict) -> dict:
    """data/prepared (test split + test.csv), data/unseen (noisy + unseen.csv), models/{pruned,onnx}: the
    ``pruned`` model and its export are the session's tiny_pruned_export (tests/conftest.py)."""
    labels = {}
    with (voicebank.parent / "log_testset.csv").open() as f:
        for row in csv.DictReader(f):
            labels[row["fname"]] = (row["loc"], float(row["snr"]))
    prepared = root / "data" / "prepared"
    rows = []
    for utt in TEST_UTTS:
        for kind in ("clean", "noisy"):
            (prepared / "test" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(voicebank / kind / f"{utt}.wav", prepared / "test" / kind / f"{utt}.wav")
        noise, snr = labels[utt]
        rows.append({"utt": utt, "speaker": utt.split("_")[0], "clean": f"test/clean/{utt}.wav",
                     "noisy": f"test/noisy/{utt}.wav", "noise": noise, "snr_db": f"{snr:g}",
                     "num_samples": sf.info(str(voicebank / "clean" / f"{utt}.wav")).frames})
    _write_csv(prepared / "test.csv", rows)

    unseen = root / "data" / "unseen"
    (unseen / "noisy").mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []
    for src, env, snr in UNSEEN:
        speech, sr = sf.read(str(prepared / "test" / "clean" / f"{src}.wav"), dtype="float64")
        noise = _unseen_noise(env, len(speech), rng)
        mixture = speech + noise * np.sqrt(np.mean(speech ** 2) / np.mean(noise ** 2) / 10 ** (snr / 10))
        utt = f"{src}_{env}_{snr_tag(snr)}"
        sf.write(str(unseen / "noisy" / f"{utt}.wav"), np.clip(mixture, -1, 1), sr, subtype="PCM_16")
        rows.append({"utt": utt, "source_utt": src, "speaker": src.split("_")[0],
                     "clean": f"../prepared/test/clean/{src}.wav", "noisy": f"noisy/{utt}.wav", "noise": env,
                     "snr_db": f"{snr:g}", "offset": 0, "num_samples": len(speech)})
    _write_csv(unseen / "unseen.csv", rows)

    params = _params()
    torch_model = root / "models" / "pruned" / "model.pt"
    torch_model.parent.mkdir(parents=True)
    shutil.copy(pruned["ckpt"], torch_model)
    shutil.copytree(pruned["out"], root / "models" / "onnx")  # pruned.onnx and its report
    onnx_model = root / "models" / "onnx" / "pruned.onnx"
    return {"params": params, "prepared": prepared, "unseen": unseen, "torch_model": torch_model,
            "onnx_model": onnx_model}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _kwargs(world: dict, root: Path) -> dict:
    return dict(prepared_dir=world["prepared"], unseen_dir=world["unseen"], torch_model=world["torch_model"],
                onnx_model=world["onnx_model"], out_dir=root / "reports" / "evaluate",
                metrics_path=root / "metrics" / "evaluate.json", enhanced_dir=root / "data" / "enhanced")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_pruned_export):
    """The world, evaluated once with MLflow logging into a temporary SQLite store."""
    import mlflow

    from effifusion.tracking import runs as tracking

    voicebank = fixtures_or_skip("voicebank_test_16k")
    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("DVC_ROOT", str(root))  # store lock and artifacts inside the temporary world
        mp.delenv("DVC_EXP_NAME", raising=False)
        mp.chdir(root)
        world = build_world(root, voicebank, tiny_pruned_export)
        with tracking.start_run("prune", world["params"]) as run:
            mlflow.log_metric("val/pesq", 1.0)
            tracking.tag_model(world["torch_model"])
        # export.precision int8: pruned.int8.onnx beside pruned.onnx, scored against it
        quantize_int8(world["onnx_model"], calibration=[synthetic_speech(2.0, seed) for seed in (1, 2)])
        metrics = ev.evaluate(world["params"], **_kwargs(world, root), precision="int8")
    return {**world, "root": root, "metrics": metrics, "run_id": run.info.run_id,
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}


def _read_rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_outputs_exist(evaluated) -> None:
    out = evaluated["root"] / "reports" / "evaluate"
    plots = [f"{s}_{m}_by_snr.png" for s in ("test", "unseen") for m in ev.SNR_PLOT_METRICS]
    assert {"si_sdr", "si_sir", "si_sar"} <= set(ev.SNR_PLOT_METRICS)
    for name in ("per_utterance.csv", "by_condition.csv", "by_condition.md", "summary_pruned.md", *plots):
        assert (out / name).is_file(), name
    spectrograms = sorted(out.glob("spectrogram_*.png"))
    assert len(spectrograms) == 2
    assert {p.stem.split("_", 1)[1][:8] for p in spectrograms} <= set(TEST_UTTS)
    assert not list(out.parent.glob(".evaluate.tmp-*"))  # the temporary folder was renamed into place
    for system in ("pytorch", "onnx"):
        for set_name, utts in (("test", TEST_UTTS), ("unseen", UNSEEN_UTTS)):
            folder = evaluated["root"] / "data" / "enhanced" / system / set_name
            assert sorted(p.stem for p in folder.glob("*.wav")) == sorted(utts)
    enhanced = sf.info(str(evaluated["root"] / "data/enhanced/onnx/test/p232_052.wav"))
    assert enhanced.frames == sf.info(str(evaluated["prepared"] / "test/noisy/p232_052.wav")).frames
    assert enhanced.samplerate == 16000


def test_metrics_json_structure(evaluated) -> None:
    metrics = json.loads((evaluated["root"] / "metrics" / "evaluate.json").read_text())
    assert metrics["test"]["n"] == 4 and metrics["unseen"]["n"] == 4
    for set_name in ("test", "unseen"):
        res = metrics[set_name]
        for system in ("noisy", "pytorch", "onnx", "improvement", "onnx_minus_pytorch"):
            assert set(METRICS) | set(ev.PUBLISHED_METRICS) <= set(res[system]), (set_name, system)
            assert all(isinstance(v, float) and math.isfinite(v) for v in res[system].values())
        for m in METRICS:
            assert res["improvement"][m] == pytest.approx(res["pytorch"][m] - res["noisy"][m])
        assert 1.0 <= res["pytorch"]["pesq"] <= 4.65 and 0.0 <= res["pytorch"]["stoi"] <= 1.0
        assert 0.0 <= res["pytorch"]["estoi"] <= 1.0 and abs(res["pytorch"]["si_sdr"]) < 100.0
        assert all(abs(res[s][m]) <= 100.0 for s in ("noisy", "pytorch") for m in ("si_sir", "si_sar"))
        assert res["noisy"]["si_sar"] > res["noisy"]["si_sir"]  # the input has noise, hardly any artefacts
        for m in ("csig", "cbak", "covl"):  # the port's 1e-10 floor on float input only ever adds
            assert res["noisy"][f"{m}_published"] >= res["noisy"][m]
    assert metrics["conventions"] == {"csig/cbak/covl": "matlab (Loizou compute_metrics, int16 scale)",
                                      "*_published": "CMGAN/MP-SENet Python port on float input"}
    rtf = metrics["rtf"]
    assert rtf["pytorch"] > 0 and rtf["onnx"] > 0 and rtf["input_seconds"] == 0.5 and rtf["threads"] == 1
    assert metrics["model"]["params_total"] >= metrics["model"]["params_nonzero"] > 0
    assert metrics["model"]["gmac_per_second"] > 0
    assert metrics == json.loads(json.dumps(evaluated["metrics"]))  # the returned dict is what was written


def test_the_int8_export_is_scored_against_fp32(evaluated) -> None:
    reduced, rows = evaluated["metrics"]["precision"], evaluated["metrics"]
    assert reduced["precision"] == "int8" and reduced["onnx"].endswith("pruned.int8.onnx")
    for set_name in ("test", "unseen"):
        res = reduced[set_name]
        assert res["n"] == 4 and set(METRICS) <= set(res["int8"]) and set(METRICS) <= set(res["minus_fp32"])
        assert res["minus_fp32"]["pesq"] == pytest.approx(res["int8"]["pesq"] - rows[set_name]["onnx"]["pesq"])
        assert abs(res["minus_fp32"]["pesq"]) <= res["minus_fp32"]["pesq_max_abs"] <= 0.1  # tiny model, 4 files
    assert rows["rtf"]["int8"] > 0 and rows["rtf"]["int8_over_onnx"] == pytest.approx(
        rows["rtf"]["int8"] / rows["rtf"]["onnx"], rel=1e-3)
    summary = (evaluated["root"] / "reports" / "evaluate" / "summary_pruned.md").read_text()
    assert "int8 ONNX − fp32 ONNX (test" in summary


def test_noisy_metrics_equal_score_pair(evaluated) -> None:
    """The noisy baseline is score_pair on the files the manifests point to, averaged."""
    for set_name, utts, manifest in (("test", TEST_UTTS, evaluated["prepared"] / "test.csv"),
                                     ("unseen", None, evaluated["unseen"] / "unseen.csv")):
        rows = _read_rows(manifest)
        scores = []
        for row in rows:
            clean, _ = sf.read(str(manifest.parent / row["clean"]), dtype="float32")
            noisy, _ = sf.read(str(manifest.parent / row["noisy"]), dtype="float32")
            scores.append(score_pair(clean, noisy, extra_conventions=("published",), noisy=noisy))
        if utts:
            assert sorted(r["utt"] for r in rows) == utts
        for m in (*METRICS, *ev.PUBLISHED_METRICS):
            expected = float(np.mean([s[m] for s in scores]))
            got = evaluated["metrics"][set_name]["noisy"][m]
            assert got == pytest.approx(expected, abs=1e-9), (set_name, m)


def test_onnx_matches_pytorch(evaluated) -> None:
    for set_name in ("test", "unseen"):
        diff = evaluated["metrics"][set_name]["onnx_minus_pytorch"]
        assert diff["pesq_max_abs"] < 0.01
        assert abs(diff["pesq"]) <= diff["pesq_max_abs"]
        assert abs(diff["stoi"]) < 1e-3 and abs(diff["estoi"]) < 1e-3
    root = evaluated["root"] / "data" / "enhanced"
    a, _ = sf.read(str(root / "pytorch/unseen/p232_170_NPARK_0.0.wav"))
    b, _ = sf.read(str(root / "onnx/unseen/p232_170_NPARK_0.0.wav"))
    assert np.max(np.abs(a - b)) < 1e-3  # the same 16-bit file up to a few LSB


def test_per_utterance_and_condition_tables(evaluated) -> None:
    out = evaluated["root"] / "reports" / "evaluate"
    rows = _read_rows(out / "per_utterance.csv")
    assert len(rows) == (4 + 4) * 3
    assert {(r["set"], r["system"]) for r in rows} == {(s, x) for s in ("test", "unseen")
                                                       for x in ("noisy", "pytorch", "onnx")}
    noisy = {r["utt"]: r for r in rows if r["system"] == "noisy" and r["set"] == "unseen"}
    assert noisy["p232_052_OHALLWAY_10.0"]["noise"] == "OHALLWAY"
    assert float(noisy["p232_052_OHALLWAY_10.0"]["snr_db"]) == 10.0
    for set_name in ("test", "unseen"):
        pesq = [float(r["pesq"]) for r in rows if r["set"] == set_name and r["system"] == "pytorch"]
        assert np.mean(pesq) == pytest.approx(evaluated["metrics"][set_name]["pytorch"]["pesq"], abs=1e-5)

    table = _read_rows(out / "by_condition.csv")
    cell = next(r for r in table if r["set"] == "unseen" and r["noise"] == "NPARK" and r["snr_db"] == "0")
    assert int(cell["n"]) == 1
    assert float(cell["noisy_pesq"]) == pytest.approx(float(noisy["p232_170_NPARK_0.0"]["pesq"]), abs=1e-5)
    overall = next(r for r in table if r["set"] == "test" and r["noise"] == "all" and r["snr_db"] == "all")
    assert int(overall["n"]) == 4
    expected = evaluated["metrics"]["test"]["pytorch"]["stoi"]
    assert float(overall["pytorch_stoi"]) == pytest.approx(expected, abs=1e-5)
    for m in ("estoi", "si_sdr", "si_sir", "si_sar"):
        expected = evaluated["metrics"]["test"]["pytorch"][m]
        assert float(overall[f"pytorch_{m}"]) == pytest.approx(expected, abs=1e-5)
        assert m in rows[0]
    md = (out / "by_condition.md").read_text()
    assert "NPARK" in md and "→" in md
    assert md.count(ev.MATLAB_CAPTION) == 2  # every table names its composite convention
    assert "pytorch_csig_published" in table[0] and "csig_published" in rows[0]
    summary = (out / "summary_pruned.md").read_text()
    assert f"{evaluated['metrics']['test']['noisy']['pesq']:.2f}" in summary
    assert f"Inference protocol: {ev.PROTOCOL}" in summary and evaluated["metrics"]["protocol"] == ev.PROTOCOL
    assert "| ONNX |" in summary and "Real-time factor" not in summary and "metrics/evaluate.json" in summary
    assert summary.count(ev.MATLAB_CAPTION) == summary.count(ev.PUBLISHED_CAPTION) == 2
    assert summary.count("\n| system |") == 4  # two tables per set, each right after its caption
    published = f"{evaluated['metrics']['test']['pytorch']['csig_published']:.2f}"
    assert published in summary.split(ev.PUBLISHED_CAPTION)[1]
    header = next(line for line in summary.splitlines() if line.startswith("| system |"))
    assert header == "| system | PESQ | CSIG | CBAK | COVL | SSNR | STOI | ESTOI | SI-SDR | SI-SIR | SI-SAR |"
    assert f"{evaluated['metrics']['test']['noisy']['si_sdr']:.2f} |" in summary  # dB, 2 decimals
    assert f"| {evaluated['metrics']['test']['noisy']['estoi']:.3f} |" in summary
    assert f"{evaluated['metrics']['test']['noisy']['si_sar']:.2f} |" in summary
    assert ev.UNITS_NOTE in summary and "SI-SDR" in md and "SI-SAR" in md


def test_plots_are_pngs(evaluated) -> None:
    import matplotlib.image

    for path in (evaluated["root"] / "reports" / "evaluate").glob("*.png"):
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        image = matplotlib.image.imread(str(path))
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, path
        assert image[..., :3].std() > 0.01, path  # something was drawn


def test_mlflow_run_got_metrics_and_artifacts(evaluated) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(evaluated["tracking_uri"])
    run = client.get_run(evaluated["run_id"])
    logged = run.data.metrics
    m = evaluated["metrics"]
    assert logged["val/pesq"] == 1.0  # the prune run was resumed, not replaced
    assert logged["test/pesq"] == pytest.approx(m["test"]["pytorch"]["pesq"])
    assert logged["test/noisy_pesq"] == pytest.approx(m["test"]["noisy"]["pesq"])
    assert logged["unseen/onnx_stoi"] == pytest.approx(m["unseen"]["onnx"]["stoi"])
    assert logged["test/estoi"] == pytest.approx(m["test"]["pytorch"]["estoi"])
    assert logged["unseen/improvement_si_sdr"] == pytest.approx(m["unseen"]["improvement"]["si_sdr"])
    assert logged["test/noisy_si_sir"] == pytest.approx(m["test"]["noisy"]["si_sir"])
    assert logged["unseen/si_sar"] == pytest.approx(m["unseen"]["pytorch"]["si_sar"])
    assert logged["unseen/improvement_pesq"] == pytest.approx(m["unseen"]["improvement"]["pesq"])
    assert logged["test/onnx_minus_torch_pesq"] == pytest.approx(m["test"]["onnx_minus_pytorch"]["pesq"])
    assert logged["rtf/torch"] == pytest.approx(m["rtf"]["pytorch"])
    assert logged["test/csig_published"] == pytest.approx(m["test"]["pytorch"]["csig_published"])
    assert logged["unseen/noisy_covl_published"] == pytest.approx(m["unseen"]["noisy"]["covl_published"])
    assert logged["rtf/onnx"] == pytest.approx(m["rtf"]["onnx"])
    assert logged["test/int8_minus_onnx_pesq"] == pytest.approx(m["precision"]["test"]["minus_fp32"]["pesq"])
    assert logged["unseen/int8_pesq"] == pytest.approx(m["precision"]["unseen"]["int8"]["pesq"])
    assert logged["rtf/onnx_int8"] == pytest.approx(m["rtf"]["int8"])
    assert {k.split("/")[0] for k in logged} == {"val", "test", "unseen", "rtf", "bench"}  # each in a section
    bench = m["bench"]  # the export's cost, measured in a fresh process (effifusion bench --model)
    assert logged["bench/rtf"] == pytest.approx(bench["rtf"]) and bench["rtf"] > 0
    assert logged["bench/peak_rss_mib"] == pytest.approx(bench["peak_rss_mib"]) and bench["peak_rss_mib"] > 0
    names = {Path(a.path).name for a in client.list_artifacts(evaluated["run_id"], "evaluation")}
    assert {"summary_pruned.md", "per_utterance.csv", "by_condition.csv", "unseen_pesq_by_snr.png"} <= names


def test_missing_inputs_name_the_producing_stage(evaluated, tmp_path) -> None:
    kwargs = {**_kwargs(evaluated, tmp_path), "track": False}
    with pytest.raises(DataError, match=r"pruned\.onnx: ONNX model not found .*export"):
        ev.evaluate(evaluated["params"], **{**kwargs, "onnx_model": tmp_path / "pruned.onnx"})
    with pytest.raises(DataError, match=r"model\.pt: pruned model checkpoint not found .*prune"):
        ev.evaluate(evaluated["params"], **{**kwargs, "torch_model": tmp_path / "model.pt"})
    with pytest.raises(DataError, match=r"unseen\.csv: unseen manifest not found .*mix_unseen"):
        ev.evaluate(evaluated["params"], **{**kwargs, "unseen_dir": tmp_path / "unseen"})
    with pytest.raises(DataError, match=r"test\.csv: test manifest not found .*prepare"):
        ev.evaluate(evaluated["params"], **{**kwargs, "prepared_dir": tmp_path / "prepared"})
    bad = {**evaluated["params"], "runtime": {**evaluated["params"]["runtime"], "evaluate_workers": 0}}
    with pytest.raises(ConfigError, match="runtime.evaluate_workers"):
        ev.evaluate(bad, **kwargs)
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------------
# aggregation on synthetic rows (no audio)


def _row(set_name: str, system: str, utt: str, noise: str, snr: float, pesq: float) -> dict:
    return {"set": set_name, "system": system, "utt": utt, "noise": noise, "snr_db": snr,
            **{m: pesq for m in METRICS}}


def test_summarize_and_condition_table_on_known_numbers() -> None:
    rows = []
    for utt, noise, snr, base in (("a", "X", 0.0, 1.0), ("b", "X", 5.0, 2.0), ("c", "Y", 0.0, 1.5)):
        onnx = base + 1 + (0.01 if utt == "b" else 0.0)
        rows += [_row("unseen", system, utt, noise, snr, value)
                 for system, value in (("noisy", base), ("pytorch", base + 1), ("onnx", onnx))]
    summary = ev.summarize_scores(rows)
    assert set(summary) == {"unseen"}
    res = summary["unseen"]
    assert res["n"] == 3
    assert res["noisy"]["pesq"] == pytest.approx(1.5) and res["pytorch"]["pesq"] == pytest.approx(2.5)
    assert res["improvement"]["pesq"] == pytest.approx(1.0)
    assert res["onnx_minus_pytorch"]["pesq"] == pytest.approx(0.01 / 3)
    assert res["onnx_minus_pytorch"]["pesq_max_abs"] == pytest.approx(0.01)

    table = {(r["noise"], r["snr_db"]): r for r in ev.condition_table(rows)}
    assert list(table) == [("X", "5"), ("X", "0"), ("Y", "0"), ("all", "5"), ("all", "0"), ("all", "all")]
    assert table[("all", "0")]["n"] == 2 and table[("all", "0")]["noisy_pesq"] == pytest.approx(1.25)
    assert table[("all", "all")]["pytorch_csig"] == pytest.approx(2.5)

    flat = ev.mlflow_metrics({**summary, "rtf": {"pytorch": 0.5, "onnx": 0.25}})
    assert flat["unseen/pesq"] == pytest.approx(2.5) and flat["unseen/noisy_pesq"] == pytest.approx(1.5)
    assert flat["unseen/onnx_minus_torch_pesq_max_abs"] == pytest.approx(0.01) and flat["rtf/onnx"] == 0.25
    assert flat["unseen/n"] == 3.0 and not [k for k in flat if k.startswith("test/")]


def test_spectrogram_items_spread_over_sets_and_snrs() -> None:
    items = [{"set": "test", "utt": f"t{i}", "snr_db": float(i)} for i in range(5)]
    items += [{"set": "unseen", "utt": f"u{i}", "snr_db": float(-i)} for i in range(3)]
    picked = ev.pick_spectrogram_items(items, 3)
    assert [it["utt"] for it in picked] == ["t0", "t4", "u2"]  # lowest and highest test SNR, lowest unseen
    assert ev.pick_spectrogram_items(items, 0) == []
    assert len(ev.pick_spectrogram_items(items, 50)) == 8


def test_dense_and_pruned_side_by_side(evaluated, tmp_path, tiny_export) -> None:
    """Two variants of different weights: each scored on its own, combined with one row per variant. The
    dense model: the session's tiny_export (tests/conftest.py), the world's model before its pruning."""
    params = evaluated["params"]
    dense_ckpt, dense_onnx = tiny_export["ckpt"], tiny_export["onnx"]
    assert not ev.same_weights(dense_ckpt, evaluated["torch_model"])
    assert ev.same_weights(evaluated["torch_model"], evaluated["torch_model"])
    kwargs = {**_kwargs(evaluated, tmp_path), "track": False, "bench": False}
    dense = ev.evaluate(params, **{**kwargs, "variant": "dense", "torch_model": dense_ckpt, "onnx_model": dense_onnx,
                                   "out_dir": tmp_path / "reports" / "evaluate_dense"})
    assert dense["variant"] == "dense" and (tmp_path / "reports" / "evaluate_dense" / "summary_dense.md").is_file()
    prune = replace(parse_params(params).prune, method="l1_unstructured", amount=0.3)
    combined = ev.combine_variants(dense, evaluated["metrics"], prune)
    assert {"dense", "pruned", "prune", "pruned_minus_dense"} <= set(combined)
    for s in ("test", "unseen"):
        assert combined["dense"][s]["noisy"] == combined["pruned"][s]["noisy"]  # the same inputs
        assert combined["dense"][s]["pytorch"]["pesq"] != combined["pruned"][s]["pytorch"]["pesq"]
        assert combined["pruned_minus_dense"][s]["pesq"] == pytest.approx(
            combined["pruned"][s]["pytorch"]["pesq"] - combined["dense"][s]["pytorch"]["pesq"])
    md = ev.variants_markdown(combined)
    for label in ("dense (PyTorch)", "dense (ONNX)", "pruned (PyTorch)", "pruned (ONNX)", "pruned − dense"):
        assert md.count(f"| {label}") == 2, label  # one row per set
    assert f"{combined['dense']['test']['pytorch']['pesq']:.2f}" in md
    assert "prune.amount 0.3" in md
