"""MUSE's public checkpoint imported into this project: it reproduces MUSE's own outputs on real
VoiceBank+DEMAND pairs, and `effifusion pretrained muse` downloads, verifies, imports and exports it.

(All 25 fixtures, with metrics of the three ways to run the weights: bench/reproduce_muse.py.)
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
import yaml

from effifusion.cli import main
from effifusion.core.config import read_params
from effifusion.core.errors import ConfigError
from effifusion.inference.backends import load_enhancer
from effifusion.inference.pretrained import DEFAULT_OPSET, PUBLISHED, install
from effifusion.metrics.pesq import pesq_wb
from effifusion.models.muse.checkpoint import load_muse_checkpoint
from effifusion.models.registry import load_checkpoint
from helpers import ROOT, fixtures_or_skip

UTTS = ["p232_170", "p257_054"]  # the two shortest fixtures (2.1 s, 2.6 s: one and two segments)
LICENSE_MD5 = "fbe9e2468cd7c2ff61aefe588a25f436"


def _reference_pesq(utt: str) -> float:
    tsv = fixtures_or_skip("voicebank_test_16k", "reference_metrics_enhanced_muse.tsv")
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    return float(next(r[1] for r in rows if r[0] == utt))


def _pcm16(y: np.ndarray) -> np.ndarray:
    """What MUSE's sf.write(..., 'PCM_16') and a float read give back (libsndfile scales by 32767)."""
    return np.clip(np.round(y * 32767), -32768, 32767) / 32768


@pytest.fixture(scope="module")
def upstream():
    return fixtures_or_skip("pretrained", "muse", "g_best")


@pytest.mark.parametrize("utt", UTTS[:1])  # all 25: bench/reproduce_muse.py (5 min)
def test_imported_checkpoint_reproduces_muse(upstream, utt):
    fx = fixtures_or_skip("voicebank_test_16k")
    model = load_muse_checkpoint(upstream)
    assert sum(p.numel() for p in model.parameters()) == 513_015
    noisy, _ = sf.read(fx / "noisy" / f"{utt}.wav", dtype="float32")
    clean, _ = sf.read(fx / "clean" / f"{utt}.wav", dtype="float32")
    reference, _ = sf.read(fx / "enhanced_muse" / f"{utt}.wav", dtype="float32")
    with torch.inference_mode():
        y = _pcm16(model.enhance(torch.from_numpy(noisy)[None])[0].numpy())
    assert np.max(np.abs(y - reference)) <= 1e-3
    pesq = pesq_wb(clean, y.astype(np.float32))
    assert pesq == pytest.approx(_reference_pesq(utt), abs=2e-3)


def test_a_foreign_or_damaged_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "g_best"
    torch.save({"generator": {"dense_encoder.nope.weight": torch.zeros(3)}}, bad)
    with pytest.raises(ConfigError, match=r"g_best: tensor 'dense_encoder.nope.weight' has no place"):
        load_muse_checkpoint(bad)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable MUSE checkpoint"):
        load_muse_checkpoint(bad)


def test_source_with_the_wrong_md5_is_refused(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    fake = tmp_path / "g_best"
    fake.write_bytes(b"x" * 100)
    with pytest.raises(ConfigError, match=r"g_best: md5 .* is not the published muse checkpoint's"):
        install("muse", tmp_path / "out", params, source=str(tmp_path))
    with pytest.raises(ConfigError, match="pretrained model 'nope' is not known"):
        install("nope", tmp_path / "out", params)


def test_without_a_params_file_the_built_in_table_applies(tmp_path, monkeypatch, capsys):
    """From a wheel there is no params.yaml: `effifusion pretrained` then checks against the built-in table,
    which holds presets/base.yaml's values."""
    base = read_params(ROOT / "presets" / "base.yaml")
    assert PUBLISHED == base["pretrained"] and DEFAULT_OPSET == base["export"]["opset"]
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    (tmp_path / "g_best").write_bytes(b"x" * 100)
    assert main(["pretrained", "muse", "-o", "out", "--source", "g_best"]) == 2
    err = capsys.readouterr().err
    assert f"is not the published muse checkpoint's {PUBLISHED['muse']['md5']}" in err, err


@pytest.mark.slow
def test_pretrained_downloads_imports_and_exports_a_model_that_enhances(upstream, tmp_path):
    """`effifusion pretrained muse -o DIR` against a local HTTP server holding the upstream file."""
    served = tmp_path / "served" / "paper_result"
    served.mkdir(parents=True)
    shutil.copy(upstream, served / "g_best")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["pretrained"]["muse"]["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/paper_result/g_best"
        out = tmp_path / "muse"
        summary = install("muse", out, params, progress=False)
    finally:
        httpd.shutdown()
    assert hashlib.md5((out / "LICENSE").read_bytes()).hexdigest() == LICENSE_MD5  # MUSE's notice, verbatim
    assert summary["params_total"] == 513_015 and summary["parity_max_abs"] <= 2e-4
    model, extra = load_checkpoint(out / "muse.pt")
    assert model.arch == "muse" and "38dfcb1" in extra["imported_from"]

    fx = fixtures_or_skip("voicebank_test_16k")
    enhancer = load_enhancer(out / "muse.onnx")  # the torch-free path `effifusion enhance` takes
    assert enhancer.card["segment_samples"] == 30700
    # the runtime feeds whole segments only, so the graph's length axis is static (traced in half the time)
    assert enhancer.card["input_shape"] == "[batch, 30700] float32"
    dims = onnx.load(str(out / "muse.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 30700
    utt = UTTS[0]
    noisy, _ = sf.read(fx / "noisy" / f"{utt}.wav", dtype="float32")
    clean, _ = sf.read(fx / "clean" / f"{utt}.wav", dtype="float32")
    y = enhancer.enhance(noisy)
    # the graph takes reflected frames' phase as exactly real (torch.stft's rounding picks ±π there):
    # close to MUSE's output, not equal to it (bench/reproduce_muse.py: all 25 files)
    pesq = pesq_wb(clean, y)
    noisy_pesq = pesq_wb(clean, noisy)
    assert pesq == pytest.approx(_reference_pesq(utt), abs=0.05)
    assert pesq > noisy_pesq + 0.3  # it enhances real speech

    # bf16 (`--precision bf16`): the same graph in OpenVINO; over all 25 pairs +0.005 PESQ (docs/benchmarks.md)
    from effifusion.inference.quantize import write_precision
    from effifusion.runtime.precision import missing_feature

    bf16_file = write_precision(out / "muse.onnx", "bf16", None)["onnx_file"]
    if missing_feature("bf16") is not None or pytest.importorskip("openvino") is None:
        return
    bf16 = load_enhancer(bf16_file, threads=1)
    assert bf16.backend == "openvino-bf16" and bf16.card["segment_samples"] == 30700
    deltas = []
    for utt in UTTS:
        noisy, _ = sf.read(fx / "noisy" / f"{utt}.wav", dtype="float32")
        clean, _ = sf.read(fx / "clean" / f"{utt}.wav", dtype="float32")
        deltas.append(pesq_wb(clean, bf16.enhance(noisy)) - pesq_wb(clean, enhancer.enhance(noisy)))
    assert abs(float(np.mean(deltas))) <= 0.1, deltas  # per file up to 0.1 (largest of 25: 0.098)
