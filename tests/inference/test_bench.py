"""`effifusion bench` and bench/bench_infer.py: the JSON row, bad arguments, a dying child, chunked rows;
`bench --model FILE.onnx` and bench_exported on a tiny export and a stand-in diffusion export.

Behaviour and bounds only, never timings: the machine running the tests is shared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from effifusion.cli import main
from effifusion.core.errors import ConfigError
from effifusion.inference.bench import BenchError, run_child
from helpers import ROOT, tiny_params

KEYS = {"preset", "arch", "backend", "runtime", "threads", "seconds", "sample_rate", "rtf", "compute_s",
        "gmac_per_s_audio", "gmac_total", "gmac_per_s_achieved", "peak_rss_mib", "baseline_rss_mib", "params_total",
        "network_evaluations", "chunked", "piece_s", "gemm_gflops", "gemm_source", "gflops_achieved", "efficiency",
        "profile_top", "platform"}
PLATFORM_KEYS = {"python", "onnxruntime", "openvino", "torch", "cpu", "cpu_features"}


def check_cost_fields(row: dict) -> None:
    """The cost model: the CPU's GEMM rate measured in the child, the FLOP rate reached, their ratio."""
    assert isinstance(row["gemm_gflops"], float) and row["gemm_gflops"] > 0.5  # any CPU multiplies faster
    assert row["gemm_source"].startswith("numpy ") and "2048x2048" in row["gemm_source"]
    if row["gmac_total"] is None:
        assert row["gflops_achieved"] is None and row["efficiency"] is None
        return
    assert row["gflops_achieved"] == pytest.approx(2 * row["gmac_total"] / row["compute_s"], rel=1e-2)
    assert row["efficiency"] == pytest.approx(row["gflops_achieved"] / row["gemm_gflops"], rel=1e-2)
    assert 0 < row["efficiency"] < 1.5
    features = row["platform"]["cpu_features"]
    assert isinstance(features, list) and all(isinstance(f, str) and f for f in features)


@pytest.mark.parametrize("backend", ["pytorch", "onnx"])
def test_json_row_of_the_demo_preset(backend: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["bench", "--preset", "demo", "--seconds", "1", "--backend", backend, "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    row = json.loads(out.strip().splitlines()[-1])
    assert set(row) == KEYS
    assert (row["preset"], row["arch"], row["backend"], row["threads"]) == ("demo", "effifusion_gan", backend, 1)
    assert row["seconds"] == 1.0 and row["sample_rate"] == 16000
    for key in ("rtf", "compute_s", "gmac_per_s_audio", "gmac_total", "gmac_per_s_achieved", "peak_rss_mib",
                "baseline_rss_mib", "piece_s"):
        assert isinstance(row[key], float) and row[key] > 0, key
    assert row["rtf"] == pytest.approx(row["compute_s"] / row["seconds"], rel=1e-3)
    assert row["peak_rss_mib"] > row["baseline_rss_mib"] > 0
    assert row["peak_rss_mib"] < 8192  # 1 s of the demo model: a few hundred MiB
    assert row["gmac_total"] == pytest.approx(row["gmac_per_s_audio"] * row["seconds"], rel=0.1)
    assert 0.5 < row["gmac_total"] < 1.0  # the demo model: 0.68 GMAC per second of audio
    assert row["gmac_per_s_achieved"] == pytest.approx(row["gmac_total"] / row["compute_s"], rel=1e-2)
    assert row["params_total"] == 32529  # presets/demo.yaml's model (effifusion summary --preset demo)
    assert row["chunked"] is False and row["piece_s"] == 1.0
    assert set(row["platform"]) == PLATFORM_KEYS
    assert all(isinstance(v, str) and v for k, v in row["platform"].items() if k != "cpu_features")
    check_cost_fields(row)
    assert row["profile_top"] is None  # no --profile


@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "preset 'nope' not found (available: "),
    (["--seconds", "0"], "--seconds 0: must be a positive number"),
    (["--seconds", "-2"], "--seconds -2: must be a positive number"),
    (["--seconds", "nan"], "--seconds nan: must be a positive number"),
    (["--seconds", "abc"], "--seconds 'abc': not a number"),
    (["--threads", "0"], "--threads 0: must be at least 1"),
    (["--threads", "1.5"], "--threads '1.5': not a whole number"),
    (["--backend", "tensorrt"], "--backend 'tensorrt': unknown backend (known: onnx, pytorch)"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "effifusion.cli", "bench", *args, "--json"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("effifusion bench: error: ") and message in lines[0]


def test_a_preset_with_a_bad_model_is_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "bad.yaml"  # a complete params file whose model section names no architecture
    params.write_text(yaml.safe_dump({**tiny_params(), "model": {"arch": "nosuch"}}))
    assert main(["bench", "--preset", str(params), "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml" in err[0] and "'nosuch' is not a known architecture" in err[0]


def test_a_child_killed_for_memory_is_reported_with_its_exit_code() -> None:
    kill = f"import os, signal; os.kill(os.getpid(), signal.{signal.SIGKILL.name})"
    with pytest.raises(BenchError, match=r"killed by SIGKILL \(exit code -9\), most likely for lack of memory"):
        run_child([sys.executable, "-c", kill])


def test_a_failing_child_is_reported_with_its_exit_code_and_last_line() -> None:
    fail = "import sys; print('noise', file=sys.stderr); sys.exit('effifusion bench: error: model gone')"
    with pytest.raises(BenchError, match=r"failed \(exit code 1\): model gone$"):
        run_child([sys.executable, "-c", fail])
    with pytest.raises(BenchError, match="printed no result"):
        run_child([sys.executable, "-c", "print('not json')"])


def test_bench_infer_script_one_piece_and_chunked_rows() -> None:
    """bench/bench_infer.py calls the same measurement; above --chunk-s it runs enhance_long in pieces."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_infer.py"), "--params", "presets/demo.yaml",
                           "--backends", "pytorch", "--lengths", "0.5", "1.5", "--chunk-s", "1.2", "--threads", "1",
                           "--repeats", "1"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| pytorch")]
    assert len(rows) == 2
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| backend")).split("|")[1:-1]
    table = [dict(zip([h.strip() for h in header], [c.strip() for c in r])) for r in rows]
    short, long = table
    assert (short["input_s"], short["chunked"], long["input_s"], long["chunked"]) == ("0.5", "False", "1.5", "True")
    # 1.5 s in 1.2 s chunks overlapping by 1 s: three chunks of 1.2 s, more MACs than the audio alone
    assert float(long["gmac"]) > 3 * float(short["gmac"])


# ---------------------------------------------------------------------------------------------
# `effifusion bench --model FILE.onnx` and bench_exported

MODEL_KEYS = {"model", "arch", "backend", "runtime", "threads", "seconds", "sample_rate", "repeats", "rtf", "compute_s",
              "times_s", "gmac_per_s_audio", "gmac_total", "gmac_per_s_achieved", "macs_source", "macs_note",
              "peak_rss_mib", "baseline_rss_mib", "params_total", "params_nonzero", "file_bytes",
              "network_evaluations", "chunked", "piece_s", "gemm_gflops", "gemm_source", "gflops_achieved",
              "efficiency", "profile_top", "platform"}


# tiny_export (tests/conftest.py): a tiny effifusion-GAN (the demo preset shrunk) exported once per session
# for real: {"onnx", "params_total", ...}


def stand_in_diffusion(folder: Path) -> Path:
    """A diffusion export whose networks are one node each (score y − x, estimate 0.5·y) and whose card has
    a sampler but no model config: bench counts its evaluations, and says it cannot count its MACs."""
    import onnx
    from onnx import TensorProto, helper

    spec = ["batch", 2, 256, "frames"]
    io = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, spec)
          for name in ("x", "y", "score", "estimate")}
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"])
    score = helper.make_graph([helper.make_node("Sub", ["y", "x"], ["score"])], "score",
                              [io["x"], io["y"], t], [io["score"]])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    predictive = helper.make_graph([helper.make_node("Mul", ["y", "half"], ["estimate"])], "predictive",
                                   [io["y"]], [io["estimate"]], initializer=[half])
    sampler = {"mode": "joint", "steps": 4, "snr": 0.5, "corrector_steps": 1, "first_fusion": True,
               "start_step": 2, "final_fusion": True, "fusion_weight": 0.5, "seed": 0}  # (4−2)(1+1)+1 = 5
    card = {"arch": "gp_sgmse", "runtime": "diffusion", "sample_rate": "16000", "min_samples": "510",
            "n_fft": "510", "hop_length": "128", "win_length": "510", "compress_factor": "0.5",
            "spec_scale": "0.15", "time_multiple": "4", "predictive_file": "d.predictive.onnx",
            "sde": json.dumps({"theta": 1.5, "sigma_min": 0.05, "sigma_max": 0.5, "t_eps": 0.03}),
            "sampler": json.dumps(sampler)}
    for graph, name, props in ((score, "d.onnx", card), (predictive, "d.predictive.onnx", {})):
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        helper.set_model_props(proto, props)
        onnx.save(proto, str(folder / name))
    return folder / "d.onnx"


def check_model_row(row: dict, seconds: float, repeats: int) -> None:
    """Keys, types and bounds of a --model row that every export shares (never timings)."""
    assert set(row) == MODEL_KEYS
    assert row["backend"] == "onnx" and row["threads"] == 1 and row["sample_rate"] == 16000
    assert row["seconds"] == seconds and row["repeats"] == repeats and len(row["times_s"]) == repeats
    for key in ("rtf", "compute_s", "peak_rss_mib", "baseline_rss_mib", "piece_s"):
        assert isinstance(row[key], float) and row[key] > 0, key
    assert min(row["times_s"]) <= row["compute_s"] <= max(row["times_s"])  # the median of the runs
    assert row["rtf"] == pytest.approx(row["compute_s"] / row["seconds"], rel=1e-2)
    assert row["peak_rss_mib"] >= row["baseline_rss_mib"] and row["peak_rss_mib"] < 4096
    assert isinstance(row["file_bytes"], int) and row["file_bytes"] > 0
    assert isinstance(row["network_evaluations"], int) and row["network_evaluations"] >= 1
    assert row["chunked"] is False and row["piece_s"] == seconds
    assert isinstance(row["macs_note"], str) and row["macs_note"]
    assert set(row["platform"]) == PLATFORM_KEYS
    check_cost_fields(row)


def test_bench_model_json_row_of_an_export(tiny_export: dict, capsys: pytest.CaptureFixture) -> None:
    onnx_path = tiny_export["onnx"]
    code = main(["bench", "--model", str(onnx_path), "--seconds", "1", "--threads", "1", "--repeats", "2",
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    row = json.loads(captured.out.strip().splitlines()[-1])
    check_model_row(row, 1.0, 2)
    assert (row["model"], row["arch"]) == (str(onnx_path), "effifusion_gan")
    assert row["params_total"] == tiny_export["params_total"]
    assert isinstance(row["params_nonzero"], int) and 0 < row["params_nonzero"] <= row["params_total"]
    assert row["file_bytes"] == onnx_path.stat().st_size and row["network_evaluations"] == 1
    # the card's gmac_per_second (the exporter's analytic count of the widths it exported) times the audio
    assert row["macs_source"] == "card"
    assert 0.01 < row["gmac_total"] < 0.68  # a shrunk demo model: below the demo's 0.68 GMAC per second
    assert row["gmac_per_s_audio"] == pytest.approx(row["gmac_total"] / row["seconds"], rel=1e-3)
    assert row["gmac_per_s_achieved"] == pytest.approx(row["gmac_total"] / row["compute_s"], rel=1e-2)


def test_bench_exported_of_a_diffusion_export_in_a_fresh_process(tmp_path: Path) -> None:
    """The API the evaluate stage calls: the same row; a card without MAC count or config gives nulls."""
    from effifusion.inference.bench import bench_exported

    path = stand_in_diffusion(tmp_path)
    row = bench_exported(path, seconds=0.5, threads=1, repeats=1)
    check_model_row(row, 0.5, 1)
    assert (row["model"], row["arch"]) == (str(path), "gp_sgmse")
    assert row["network_evaluations"] == 5  # the card's sampler on one piece
    assert row["file_bytes"] == path.stat().st_size + (tmp_path / "d.predictive.onnx").stat().st_size
    assert row["params_total"] is None and row["params_nonzero"] is None  # the stand-in's card lacks them
    assert row["macs_source"] is None and row["macs_note"].startswith("unknown: ")
    assert (row["gmac_total"], row["gmac_per_s_audio"], row["gmac_per_s_achieved"]) == (None, None, None)
    (tmp_path / "d.predictive.onnx").unlink()
    with pytest.raises(ConfigError, match=r"d\.onnx: its predictive network d\.predictive\.onnx is missing"):
        bench_exported(path, seconds=0.5)


def test_card_gmacs_prefers_the_card_and_refuses_a_config_that_is_not_the_file(tiny_export: dict) -> None:
    import onnxruntime as ort

    from effifusion.inference.bench import card_gmacs
    from effifusion.runtime.onnx_model import model_card

    meta = ort.InferenceSession(str(tiny_export["onnx"]), providers=["CPUExecutionProvider"])
    card = model_card(meta.get_modelmeta().custom_metadata_map)
    from_card, source, _ = card_gmacs(card, [16000], 16000)
    assert source == "card" and from_card == pytest.approx(card["gmac_per_second"])
    card = {k: v for k, v in card.items() if k != "gmac_per_second"}  # an export made before the key existed
    derived, source, _ = card_gmacs(card, [16000], 16000)
    assert source == "config" and derived == pytest.approx(from_card, abs=1e-6)  # the same count
    assert card_gmacs({**card, "gmac_per_second": "0.5"}, [32000], 16000)[:2] == (1.0, "card")
    gmacs, source, note = card_gmacs({**card, "params_total": card["params_total"] // 2}, [16000], 16000)
    assert (gmacs, source) == (None, None) and "channel-pruned" in note
    assert card_gmacs({"arch": "effifusion_gan"}, [16000], 16000)[:2] == (None, None)


@pytest.mark.parametrize("args, message", [
    (["--preset", "demo"], "--preset demo does not apply with --model "),
    (["--backend", "pytorch"], "--backend pytorch does not apply with --model "),
    (["--repeats", "0"], "--repeats 0: must be at least 1"),
    (["--seconds", "0"], "--seconds 0: must be a positive number"),
    (["--precision", "int8"], "--precision int8 does not apply with --model "),
])
def test_options_that_do_not_apply_to_a_file_are_one_line(tiny_export: dict, args: list[str], message: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--model", str(tiny_export["onnx"]), *args, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("effifusion bench: error: ") and message in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp16"], "precision 'fp16': unknown"),
    (["--precision", "bf16", "--backend", "pytorch"], "--precision bf16: applies to --backend onnx only"),
    (["--precision", "int8", "--backend", "pytorch"], "--precision int8: applies to --backend onnx only"),
])
def test_a_precision_that_cannot_be_benched_is_one_line(args: list[str], message: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--preset", "demo", *args, "--json"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_repeats_without_a_model_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--repeats", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("effifusion bench: error: --repeats applies to --model only "
                                               "(a preset's bench times one run)")


@pytest.mark.parametrize("name, content, message", [
    ("missing.onnx", None, "missing.onnx: model file not found"),
    ("generator.pt", b"\x80\x02 not onnx", "generator.pt: not an ONNX model (bench --model measures an "),
    ("text.onnx", b"hello", "text.onnx: not an ONNX model (not an ONNX protobuf)"),
    ("empty.onnx", b"", "empty.onnx: not an ONNX model (empty file)"),
    ("broken.onnx", b"\x08\x07 garbage", "broken.onnx: not a loadable ONNX model ("),  # the child finds it
])
def test_a_missing_or_non_onnx_file_is_one_line(tmp_path: Path, name: str, content: bytes | None, message: str
                                                ) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "effifusion.cli", "bench", "--model", str(path), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("effifusion bench: error: ") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == (2 if name == "broken.onnx" else 1)  # the child's error follows the progress line


def test_bench_exported_peak_is_the_child_s_own_not_its_parent_s(tiny_export: dict) -> None:
    """Linux keeps ru_maxrss across fork + exec: a child of a big process (the evaluate stage) must still
    report its own peak (VmHWM), or every export would seem to need the caller's memory."""
    import numpy as np

    from effifusion.inference.bench import bench_exported

    ballast = np.ones(600 * 2**20 // 8)  # 600 MiB resident in this (the parent) process
    row = bench_exported(tiny_export["onnx"], seconds=0.5, threads=1)
    assert ballast[-1] == 1.0
    assert 0 < row["baseline_rss_mib"] <= row["peak_rss_mib"] < 500


# ---------------------------------------------------------------------------------------------
# The cost model: --profile, the profile's summary, the CPU's features


def test_profile_lists_the_operators_of_the_timed_run(tiny_export: dict, capsys: pytest.CaptureFixture) -> None:
    from effifusion.inference.bench import describe

    code = main(["bench", "--model", str(tiny_export["onnx"]), "--seconds", "1", "--threads", "1", "--repeats", "1",
                 "--profile", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    row = json.loads(captured.out.strip().splitlines()[-1])
    check_model_row(row, 1.0, 1)
    top = row["profile_top"]
    assert isinstance(top, list) and 3 <= len(top) <= 10
    assert set(top[0]) == {"op", "nodes", "ms", "share", "gflops"}
    assert [r["ms"] for r in top] == sorted((r["ms"] for r in top), reverse=True)
    assert all(r["nodes"] >= 1 and r["ms"] >= 0 and 0 <= r["share"] <= 1 for r in top)
    assert sum(r["share"] for r in top) <= 1.001
    ops = {r["op"]: r for r in top}
    assert "Conv" in ops and ops["Conv"]["gflops"] > 0  # the model's convolutions, with the rate they reached
    # the profiled operators take about the run's time (not the warm-up's too)
    assert sum(r["ms"] for r in top) < 1.5 * 1000 * row["compute_s"]
    text = describe(row)
    assert "efficiency  " in text and "profile     ONNX Runtime's operators by time" in text
    assert any(line.split()[:1] == ["Conv"] for line in text.splitlines())


def test_profile_needs_onnx_runtime(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--backend", "pytorch", "--profile"]) == 2
    assert "--profile: ONNX Runtime's profiler, which the pytorch backend does not run" in capsys.readouterr().err


def test_profile_top_counts_a_scan_for_its_own_time_and_skips_the_warm_up() -> None:
    from effifusion.runtime.cost import profile_top

    def node(op: str, ts: int, dur: int, name: str, shapes: tuple = ()) -> dict:
        args = {"op_name": op}
        if shapes:
            args["input_type_shape"] = [{"float": s} for s in shapes[:-1]]
            args["output_type_shape"] = [{"float": shapes[-1]}]
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": args}

    events = [{"name": "model_run", "ts": 0, "dur": 50}, node("MatMul", 5, 40, "warm"),  # the warm-up
              {"name": "model_run", "ts": 100, "dur": 1000},
              node("Scan", 100, 600, "scan"),
              node("MatMul", 110, 200, "body_mm", ([2, 256, 64], [64, 256], [2, 256, 256])),
              node("Softmax", 320, 300, "body_sm"),
              node("Conv", 700, 400, "conv", ([1, 64, 1000], [64, 64, 3], [1, 64, 1000])),
              node("Gemm", 1100, 100, "gemm", ([1000, 64], [256], [1000, 256]))]  # B prepacked: not listed
    top = profile_top(events, skip_runs=1)
    assert [(r["op"], r["nodes"], r["ms"]) for r in top] == [
        ("Conv", 1, 0.4), ("Softmax", 1, 0.3), ("MatMul", 1, 0.2), ("Scan", 1, 0.1), ("Gemm", 1, 0.1)]
    assert sum(r["share"] for r in top) == pytest.approx(1.0, abs=1e-3)
    assert top[2]["gflops"] == pytest.approx(2 * (2 * 256 * 256) * 64 / 200e-6 / 1e9, rel=1e-2)  # 2·out·k FLOPs
    assert top[0]["gflops"] == pytest.approx(2 * (64 * 1000) * (64 * 3) / 400e-6 / 1e9, rel=1e-2)
    assert top[1]["gflops"] is None
    assert top[4]["gflops"] == pytest.approx(2 * 1000 * 256 * 64 / 100e-6 / 1e9, rel=1e-2)


def test_cpu_features_from_cpuinfo(tmp_path: Path) -> None:
    from effifusion.runtime.cost import cpu_features

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_features(info) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert cpu_features(tmp_path / "none") == []
