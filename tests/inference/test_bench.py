"""`effifusion bench` and bench/bench_infer.py: the JSON row, bad arguments, a dying child, chunked rows.

Behaviour and bounds only, never timings: the machine running the tests is shared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import ROOT

from effifusion.cli import main
from effifusion.inference.bench import BenchError, run_child

KEYS = {"preset", "arch", "backend", "threads", "seconds", "sample_rate", "rtf", "compute_s", "gmac_per_s_audio",
        "gmac_total", "gmac_per_s_achieved", "peak_rss_mib", "baseline_rss_mib", "params_total", "network_evaluations", "chunked",
        "piece_s", "platform"}


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
    assert set(row["platform"]) == {"python", "onnxruntime", "torch", "cpu"}
    assert all(isinstance(v, str) and v for v in row["platform"].values())


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
    params = tmp_path / "bad.yaml"
    params.write_text("audio: {sample_rate: 16000}\nmodel: {arch: nosuch}\n")
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
