"""Reduced-precision exports (export.precision: int8 | bf16): each model beside fp32 scores within a bounded
PESQ drop of it on real fixture pairs; a CPU without VNNI (int8) or bf16, or an install without OpenVINO (bf16),
runs fp32 and says so in one line; the bench times each against fp32 in one sitting. (MUSE's pretrained model:
tests/inference/test_pretrained.py; the measurements: docs/benchmarks.md.)"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from effifusion.core.errors import ConfigError
from effifusion.core.params import check_params
from effifusion.inference import quantize
from effifusion.runtime import precision
from effifusion.runtime.enhancer import load_onnx
from helpers import ROOT, fixtures_or_skip

PAIRS = ["p232_170", "p257_054", "p232_005"]  # real VoiceBank+DEMAND test pairs


@pytest.fixture(scope="module")
def tiny_int8(tiny_export: dict, tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny export copied with its int8 model beside it, calibrated as the export stage does
    (data/prepared/train of the tiny corpus)."""
    out = tmp_path_factory.mktemp("tiny_int8")
    fp32 = out / "pruned.onnx"
    shutil.copy(tiny_export["onnx"], fp32)
    report = quantize.quantize_int8(fp32, calibration=quantize.calibration_from_dir(tiny_corpus / "train", 16000),
                                    calibration_source="tiny corpus train")
    return {"fp32": fp32, "int8": Path(report["onnx_file"]), "report": report}


def test_int8_model_beside_fp32_with_its_card(tiny_int8: dict) -> None:
    report, int8 = tiny_int8["report"], tiny_int8["int8"]
    assert int8 == tiny_int8["fp32"].with_name("pruned.int8.onnx") and int8.is_file()
    assert report["quantize_nodes"] > 0 and report["kept_in_fp32"] >= 1  # at least the STFT stays fp32
    enhancer = load_onnx(int8)
    assert enhancer.card["precision"] == "int8" and enhancer.card["fp32_file"] == "pruned.onnx"
    assert enhancer.source == str(int8) or precision.missing_feature("int8") is not None


def test_int8_scores_within_a_bounded_pesq_drop_of_fp32_on_real_pairs(tiny_int8: dict, monkeypatch) -> None:
    from effifusion.metrics.pesq import pesq_wb

    fx = fixtures_or_skip("voicebank_test_16k")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_vnni"}))  # run the int8 file itself
    fp32, int8 = load_onnx(tiny_int8["fp32"], threads=1), load_onnx(tiny_int8["int8"], threads=1)
    assert int8.source == str(tiny_int8["int8"])
    deltas = []
    for utt in PAIRS:
        noisy, _ = sf.read(fx / "noisy" / f"{utt}.wav", dtype="float32")
        clean, _ = sf.read(fx / "clean" / f"{utt}.wav", dtype="float32")
        a, b = fp32.enhance_segment(noisy), int8.enhance_segment(noisy)
        assert np.max(np.abs(a - b)) > 0  # it is a different model
        deltas.append(pesq_wb(clean, b) - pesq_wb(clean, a))
    assert abs(float(np.mean(deltas))) <= 0.05, deltas


def test_a_cpu_without_vnni_runs_the_fp32_model_and_says_so_in_one_line(tiny_int8: dict, monkeypatch, capsys
                                                                        ) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse4_2", "avx2", "avx512f"}))
    enhancer = load_onnx(tiny_int8["int8"], threads=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruned.int8.onnx is int8, but this CPU lacks VNNI" in err[0], err
    assert "running the fp32 model pruned.onnx instead" in err[0]
    assert enhancer.source == str(tiny_int8["fp32"]) and "precision" not in enhancer.card
    assert enhancer.enhance_segment(np.zeros(4000, np.float32) + 0.01).shape == (4000,)

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx_vnni"}))  # a CPU with it: silent
    assert load_onnx(tiny_int8["int8"]).source == str(tiny_int8["int8"])
    assert capsys.readouterr().err == ""


def test_without_its_fp32_model_the_int8_model_runs_with_one_line(tiny_int8: dict, tmp_path, monkeypatch, capsys
                                                                   ) -> None:
    alone = tmp_path / "pruned.int8.onnx"
    shutil.copy(tiny_int8["int8"], alone)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert load_onnx(alone).source == str(alone)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not beside it, so the int8 model runs" in err[0], err


def test_the_export_stage_quantizes_once_and_keeps_the_file(tiny_export: dict, tiny_corpus: Path, tmp_path) -> None:
    from effifusion.inference.export import remove_stale

    fp32 = tmp_path / "pruned.onnx"
    shutil.copy(tiny_export["onnx"], fp32)
    report, how = quantize.export_precision({"onnx_file": str(fp32)}, "int8", tiny_corpus / "train", 16000)
    assert how == "quantized" and report["onnx_file"] == str(tmp_path / "pruned.int8.onnx")
    assert (tmp_path / "pruned.int8.export.json").is_file() and "train" in report["calibration"]
    assert quantize.export_precision({"onnx_file": str(fp32)}, "int8", tiny_corpus / "train", 16000)[1] == "reused"
    assert quantize.export_precision({"onnx_file": str(fp32)}, "fp32", tiny_corpus / "train", 16000) is None
    (tmp_path / "old.onnx").write_bytes(b"x")
    assert remove_stale(tmp_path, [{"onnx_file": str(fp32)}, report]) == ["old.onnx"]


def test_feature_detection_and_file_names() -> None:
    assert precision.missing_feature("int8", frozenset({"avx512_vnni"})) is None
    assert precision.missing_feature("int8", frozenset({"avx2"})) == "VNNI (avx512_vnni or avx_vnni)"
    assert precision.missing_feature("fp32", frozenset()) is None
    assert precision.precision_file(Path("m/pruned.onnx"), "int8") == Path("m/pruned.int8.onnx")
    assert precision.precision_file(Path("m/pruned.onnx"), "fp32") == Path("m/pruned.onnx")


def test_unknown_precisions_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="precision 'fp16': unknown"):
        quantize.check_precision("fp16")
    assert quantize.check_precision("bf16") == "bf16"


@pytest.fixture(scope="module")
def tiny_bf16(tiny_export: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("tiny_bf16")
    fp32 = out / "pruned.onnx"
    shutil.copy(tiny_export["onnx"], fp32)
    return {"fp32": fp32, "bf16": Path(quantize.write_bf16(fp32)["onnx_file"])}


BF16_CPU = frozenset({"avx512f", "avx512_bf16"})


def test_bf16_model_is_the_fp32_graph_run_by_openvino(tiny_bf16: dict, monkeypatch) -> None:
    pytest.importorskip("openvino")
    monkeypatch.setattr(precision, "cpu_flags", lambda: BF16_CPU)
    bf16 = tiny_bf16["bf16"]
    assert bf16.name == "pruned.bf16.onnx"
    enhancer, fp32 = load_onnx(bf16, threads=1), load_onnx(tiny_bf16["fp32"], threads=1)
    assert enhancer.card["precision"] == "bf16" and enhancer.card["fp32_file"] == "pruned.onnx"
    assert enhancer.backend == "openvino-bf16" and enhancer.session is None and fp32.backend == "onnxruntime"
    x = np.sin(np.arange(16000, dtype=np.float32) * 0.05) * 0.3
    x += np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.05
    a, b = fp32.enhance_segment(x), enhancer.enhance_segment(x)
    assert a.shape == b.shape and np.max(np.abs(a - b)) > 0  # other arithmetic
    assert np.corrcoef(a, b)[0, 1] > 0.9  # ... the same function (quality on real speech: the next test)
    with pytest.raises(ConfigError, match="already bf16"):
        quantize.write_bf16(bf16)


def test_bf16_scores_within_a_bounded_pesq_drop_of_fp32_on_real_pairs(tiny_bf16: dict, monkeypatch) -> None:
    from effifusion.metrics.pesq import pesq_wb

    pytest.importorskip("openvino")
    fx = fixtures_or_skip("voicebank_test_16k")
    monkeypatch.setattr(precision, "cpu_flags", lambda: BF16_CPU)
    fp32, bf16 = load_onnx(tiny_bf16["fp32"], threads=1), load_onnx(tiny_bf16["bf16"], threads=1)
    assert bf16.backend == "openvino-bf16"
    deltas = []
    for utt in PAIRS:
        noisy, _ = sf.read(fx / "noisy" / f"{utt}.wav", dtype="float32")
        clean, _ = sf.read(fx / "clean" / f"{utt}.wav", dtype="float32")
        deltas.append(pesq_wb(clean, bf16.enhance_segment(noisy)) - pesq_wb(clean, fp32.enhance_segment(noisy)))
    assert abs(float(np.mean(deltas))) <= 0.05, deltas


def test_bf16_without_openvino_or_the_cpu_feature_runs_fp32_and_says_so_in_one_line(
        tiny_bf16: dict, tmp_path, monkeypatch, capsys) -> None:
    from effifusion.runtime import openvino_model

    x = np.zeros(4000, np.float32) + 0.01
    want = load_onnx(tiny_bf16["fp32"], threads=1).enhance_segment(x)
    capsys.readouterr()
    monkeypatch.setattr(precision, "cpu_flags", lambda: BF16_CPU)
    monkeypatch.setattr(openvino_model, "openvino_available", lambda: False)  # an install without it
    enhancer = load_onnx(tiny_bf16["bf16"], threads=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruned.bf16.onnx is bf16, which runs in OpenVINO" in err[0], err
    assert "running the same graph in fp32 with ONNX Runtime" in err[0]
    assert enhancer.backend == "onnxruntime" and np.array_equal(enhancer.enhance_segment(x), want)

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # a CPU without bf16
    enhancer = load_onnx(tiny_bf16["bf16"], threads=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruned.bf16.onnx is bf16, but this CPU lacks AVX512-BF16 or AMX-BF16" in err[0], err
    assert enhancer.source == str(tiny_bf16["fp32"]) and enhancer.backend == "onnxruntime"
    alone = tmp_path / "pruned.bf16.onnx"  # without its fp32 model beside it: the graph itself, in fp32
    shutil.copy(tiny_bf16["bf16"], alone)
    enhancer = load_onnx(alone, threads=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "so its graph runs in fp32 with ONNX Runtime" in err[0], err
    assert enhancer.backend == "onnxruntime" and np.array_equal(enhancer.enhance_segment(x), want)


def test_the_export_stage_writes_bf16_once(tiny_export: dict, tiny_corpus: Path, tmp_path) -> None:
    fp32 = tmp_path / "pruned.onnx"
    shutil.copy(tiny_export["onnx"], fp32)
    report, how = quantize.export_precision({"onnx_file": str(fp32)}, "bf16", tiny_corpus / "train", 16000)
    assert how == "written" and report["onnx_file"] == str(tmp_path / "pruned.bf16.onnx")
    assert (tmp_path / "pruned.bf16.export.json").is_file() and "OpenVINO" in report["engine"]
    assert quantize.export_precision({"onnx_file": str(fp32)}, "bf16", tiny_corpus / "train", 16000)[1] == "reused"


def test_the_params_schema_has_export_precision() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = yaml.safe_load((ROOT / "presets" / "base.yaml").read_text())
    assert params["export"]["precision"] == base["export"]["precision"] == "fp32"
    for value in ("fp32", "int8", "bf16"):
        good = copy.deepcopy(params)
        good["export"]["precision"] = value
        check_params(good)
    bad = copy.deepcopy(params)
    bad["export"]["precision"] = "fp16"
    with pytest.raises(ConfigError, match=r"export.precision: 'fp16' is not valid \(one of"):
        check_params(bad)


@pytest.mark.parametrize("reduced", ["int8", "bf16"])
def test_bench_precision_row_times_the_reduced_model_against_fp32(reduced: str, tiny_export: dict, monkeypatch
                                                                  ) -> None:
    from effifusion.inference.bench import Prepared, describe, measure
    from effifusion.models.registry import load_checkpoint

    monkeypatch.setattr(quantize, "BENCH_ROUNDS", 1)
    monkeypatch.setattr(quantize, "CALIBRATION_UTTERANCES", 1)
    model, _ = load_checkpoint(tiny_export["ckpt"])
    if reduced == "bf16":
        pytest.importorskip("openvino")
    folder = Path(tiny_export["onnx"]).parent.parent / f"bench_{reduced}"
    folder.mkdir(exist_ok=True)
    shutil.copy(tiny_export["onnx"], folder / "model.onnx")
    prepared = Prepared("tiny", model, tiny_export["ckpt"], folder / "model.onnx")
    row = quantize.bench_precision(prepared, reduced, 0.5, 1, measure, progress=False)
    assert row["precision"] == reduced and row["backend"] == "onnx" and row["rounds"] == 1
    assert row["fp32_compute_s"] > 0 and row["time_ratio_to_fp32"] == pytest.approx(
        row["compute_s"] / row["fp32_compute_s"], rel=1e-3)
    if reduced == "int8":
        assert row["quantization"]["quantize_nodes"] > 0
    else:  # the child ran the bf16 file in OpenVINO (on a CPU without bf16: the fp32 graph, said in one line)
        assert row["runtime"] == ("openvino-bf16" if precision.missing_feature("bf16") is None else "onnxruntime")
    assert "x fp32's time" in describe(row)
