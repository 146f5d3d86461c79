"""Whole utterances in bounded memory: the paper-size model enhances 10 s in one piece within 1 GiB.

Measured by `effifusion bench` in a fresh process (ONNX Runtime, 1 thread, peak RSS of that process:
runtime, model and run; no torch). Before attention ran in query blocks this needed 18.6 GB
(REFERENCE §10). A benchmark of memory, not of time: no timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

GIB = 1024.0  # MiB


def test_paper_model_enhances_10_s_in_one_piece_within_1_gib():
    proc = subprocess.run([sys.executable, "-m", "effifusion.cli", "bench", "--preset", "paper", "--seconds", "10",
                           "--backend", "onnx", "--threads", "1", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["params_total"] == 1_086_033 and not row["chunked"] and row["piece_s"] == 10.0
    # measured with the attention as ONNX Runtime's MultiHeadAttention: 786 MiB in a fresh clone
    # (2026-12-03; the Scan graph before it: 776-1130 MiB), against 18.6 GB before blocked attention
    assert row["peak_rss_mib"] <= 1.0 * GIB, row
