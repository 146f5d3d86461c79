"""bench/gpu_check.py (`make gpu-check`): the parts that need no GPU, and the whole check on one.

Without CUDA the script must print one line and exit 0; the table, loss and report formatting are
pure functions; the timed GanStep loop runs on CPU with a tiny model. The full run is `gpu`-marked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

SCRIPT = ROOT / "bench" / "gpu_check.py"


def test_without_cuda_it_prints_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # hides a GPU if there is one
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "no CUDA device: gpu-check skipped"


FAKE_ROWS = [
    {"config": "fp32", "steps_per_s": 4.321, "s_per_step": 0.2314, "pesq_wait_pct": 12.34, "peak_gib": 3.456,
     "notes": "float32"},
    {"config": "bf16", "steps_per_s": 6.0, "s_per_step": 0.1667, "pesq_wait_pct": 0.0, "peak_gib": 2.0,
     "notes": "g_total 3 -> 1 | fall"},
    {"config": "bf16 + compile", "notes": "FAILED: compile: did not finish within its cap of 120 s"},
    {"config": "bf16 + compile (2)", "steps_per_s": 9.0, "s_per_step": 0.111, "compile_s": 61.23, "notes": ""},
    {"config": "nan row", "steps_per_s": float("nan"), "s_per_step": None, "notes": None},
]


def test_format_table_has_one_row_per_configuration():
    table = gpu_check.format_table(FAKE_ROWS)
    lines = table.strip().splitlines()
    assert lines[0] == "| config | steps/s | s/step | PESQ wait % | peak GiB | notes |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert len(lines) == 2 + len(FAKE_ROWS)
    assert lines[2] == "| fp32 | 4.32 | 0.2314 | 12.3 | 3.46 | float32 |"
    assert all(line.count("|") == 7 for line in lines)  # a '|' inside notes does not add a column
    assert "| bf16 + compile | – | – | – | – | FAILED: compile" in lines[4]
    assert lines[6] == "| nan row | – | – | – | – |  |"


def test_loss_fall_compares_first_and_last_windows():
    falling = [{"g_total": 10.0 - 0.1 * i, "g_magnitude": 1.0 - 0.001 * i} for i in range(300)]
    lf = gpu_check.loss_fall(falling)
    assert lf["falls"] is True and lf["window"] == 20 and lf["steps"] == 300
    assert lf["g_total"]["first"] == pytest.approx(10.0 - 0.1 * 9.5)
    assert lf["g_total"]["last"] == pytest.approx(10.0 - 0.1 * 289.5)
    flat_magnitude = [{"g_total": 10.0 - 0.1 * i, "g_magnitude": 1.0} for i in range(300)]
    assert gpu_check.loss_fall(flat_magnitude)["falls"] is False  # both losses must fall
    assert gpu_check.loss_fall(falling[:10])["window"] == 5  # short runs: half the run at each end
    assert gpu_check.loss_fall(falling[:1])["falls"] is None
    assert "fall" in gpu_check.format_loss_fall(lf) and "do NOT" not in gpu_check.format_loss_fall(lf)


def test_format_report_names_versions_gpu_and_failures():
    info = {"gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0", "channels": 64, "blocks": 4, "params_m": 1.08,
            "batch": 4, "segment_s": 2.0, "pesq_workers": 8, "elapsed_s": 301.0}
    text = gpu_check.format_report(info, FAKE_ROWS, None, ["compile: did not finish"])
    assert "NVIDIA H200" in text and "torch 2.11.0" in text and "CUDA 13.0" in text and "C=64 x4" in text
    assert gpu_check.format_table(FAKE_ROWS) in text
    assert "torch.compile time (bf16 + compile (2)): 61.2 s" in text
    assert text.rstrip().endswith("FAILED: compile: did not finish")
    assert gpu_check.format_report({}, [], None, []).rstrip().endswith("all phases passed")


def test_timed_run_on_cpu_measures_the_gan_step():
    """The loop the GPU phases run, on CPU with a tiny model and PESQ inline."""
    params = gpu_check.setup_params(Namespace(preset="paper", tiny=True, pesq_workers=0))
    device = torch.device("cpu")
    batches = gpu_check.make_batches(params, 2, device)
    assert batches[0][0].shape == (2, 8000)
    with gpu_check.PesqPool(0) as pool:
        row, history = gpu_check.timed_run("fp32", params, device, batches, pool, amp=False, compile_=False,
                                           warmup=1, steps=2, cap_s=60.0)
    assert row["steps"] == 2 and len(history) == 3
    assert row["steps_per_s"] == pytest.approx(1 / row["s_per_step"])
    assert 0 <= row["pesq_wait_pct"] <= 100 and row["peak_gib"] > 0
    assert {"g_total", "g_magnitude", "d_loss"} <= set(history[0])
    assert "| fp32 |" in gpu_check.format_table([row])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_check_quick_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    configs = [r["config"] for r in result["rows"]]
    assert configs == ["fp32", "bf16", "bf16 + DDP (torchrun, 1 proc)", "bf16 + compile"]
    assert all(r["steps_per_s"] > 0 and r["peak_gib"] > 0 for r in result["rows"])
    assert result["rows"][2]["backend"] == "nccl" and result["rows"][2]["ok"]
    assert "| config | steps/s |" in proc.stdout
