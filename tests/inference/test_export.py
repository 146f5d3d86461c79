"""ONNX export: PyTorch/ONNX Runtime parity, dynamic axes, stored weights, report, errors, MLflow logging.

One tiny pruned generator (C = 8, one TS-Conformer block, 30 % of conv weights zeroed, saved with its
weight_orig / weight_mask pairs) is exported once per session (tests/conftest.py: tiny_pruned_export);
the tests read that export.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from effifusion.core.errors import ConfigError
from effifusion.core.settings import AudioConfig, ExportConfig, parse_section
from effifusion.dsp.stft import dft_transforms
from effifusion.inference.export import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    REPORT_FILE,
    ExportError,
    export_onnx,
    log_to_mlflow,
    onnx_session,
    parity_signal,
)
from helpers import TINY_PARITY_LENGTHS_S, tiny_params

AUDIO = AudioConfig(16000)
# (0.25, 1.0000625, 1.2345625) s: see helpers.TINY_PARITY_LENGTHS_S
EXPORT_CFG = ExportConfig(opset=18, parity_lengths_s=TINY_PARITY_LENGTHS_S, parity_tolerance=1e-4)


def tiny_cfg() -> dict:
    return tiny_params()["model"]  # C = 8, one TS-Conformer block: the model of tiny_pruned_export


@pytest.fixture(scope="module")
def exported(tiny_pruned_export: dict) -> dict:
    """The pruned tiny generator (tiny_cfg(), seed 0), exported at EXPORT_CFG once per session:
    {"ckpt", "out", "report", "generator"}."""
    return tiny_pruned_export


def reference(generator, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return generator.enhance(torch.from_numpy(x)).numpy()


def test_parity_at_export_lengths(exported: dict) -> None:
    diffs = exported["report"]["parity_max_abs_per_length_s"]
    assert len(diffs) == 3
    assert all(0 <= d <= 1e-4 for d in diffs.values()), diffs
    assert exported["report"]["onnx_parity_max_abs"] == max(diffs.values())


@pytest.mark.parametrize("seconds", [0.5, 3.0, 10.0, 30.0])
def test_whole_utterance_parity_at_any_length(exported: dict, seconds: float) -> None:
    """Whole inputs in one piece, as evaluate and enhance run them: the exported graph (ONNX Runtime's
    MultiHeadAttention and the export forms of models/onnx_forms.py) and PyTorch's model agree to 1e-4 at
    every length."""
    session = onnx_session(exported["out"] / ONNX_FILE)
    x = parity_signal(int(seconds * 16000), 16000, seed=7)[None]
    got = session.run(None, {INPUT_NAME: x})[0]
    assert np.abs(got - reference(exported["generator"], x)).max() <= 1e-4


def test_attention_and_prelu_are_exported_in_their_fast_forms(exported: dict) -> None:
    """Attention is ONNX Runtime's MultiHeadAttention (no Scan, no score tensor); PReLU with slopes in
    [0, 1] is max(x, slope·x); the conformer's GLU has no Split (models/onnx_forms.py)."""
    graph = onnx.load(str(exported["out"] / ONNX_FILE)).graph
    ops = [n.op_type for n in graph.node]
    mha = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert len(mha) == 2 * tiny_cfg()["num_tsblocks"]  # time and frequency attention per block
    assert all(n.domain == "com.microsoft" for n in mha)
    assert "Scan" not in ops and "Softmax" not in ops and "PRelu" not in ops and "Split" not in ops
    prelus = sum(isinstance(m, torch.nn.PReLU) for m in exported["generator"].modules())
    assert prelus > 0 and ops.count("Max") >= prelus  # random weights: every slope starts at 0.25


def test_graph_passes_checker_and_has_dynamic_axes(exported: dict) -> None:
    path = exported["out"] / ONNX_FILE
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert all(d.dim_param and not d.dim_value for d in dims)  # batch and length both symbolic
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sample_rate"] == "16000" and meta["n_fft"] == "400" and meta["min_samples"] == "400"
    assert meta["arch"] == "effifusion_gan" and json.loads(meta["config"]) == exported["generator"].config()


def test_model_card_in_the_metadata(exported: dict, capsys: pytest.CaptureFixture) -> None:
    """The export describes itself: what the enhancer and a reader of --info need, no params.yaml."""
    from effifusion import __version__
    from effifusion.cli import main as cli_main
    from effifusion.inference.backends import load_enhancer
    from effifusion.runtime.onnx_model import CARD_KEYS

    path = exported["out"] / ONNX_FILE
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(CARD_KEYS) <= set(meta), set(CARD_KEYS) - set(meta)
    assert (meta["input_name"], meta["output_name"]) == (INPUT_NAME, OUTPUT_NAME)
    assert meta["input_shape"] == meta["output_shape"] == "[batch, samples] float32"
    assert meta["normalisation"].startswith("rms: inside the graph")
    assert meta["memory_mb_per_s"] == "unmeasured" and meta["effifusion_version"] == __version__
    generator = exported["generator"]
    assert int(meta["params_total"]) == sum(p.numel() for p in generator.parameters())
    assert int(meta["params_nonzero"]) == exported["report"]["params_nonzero"]
    card = load_enhancer(path).card
    assert card["sample_rate"] == 16000 and card["config"] == generator.config()
    assert cli_main(["enhance", "--model", str(path), "--info"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params_total"] == int(meta["params_total"]) and printed["backend"] == "onnxruntime"


@pytest.mark.parametrize("batch,n", [(1, 7777), (3, 5001), (1, 123)])
def test_dynamic_batch_and_length_match_pytorch(exported: dict, batch: int, n: int) -> None:
    """Lengths and batch sizes never seen at export, including one shorter than n_fft (zero-padded)."""
    session = onnx_session(exported["out"] / ONNX_FILE)
    x = np.stack([parity_signal(n, 16000, seed=100 + b) for b in range(batch)])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    assert got.shape == (batch, n)
    np.testing.assert_allclose(got, reference(exported["generator"], x), atol=1e-4, rtol=0)


def test_each_weight_stored_once_without_pruning_buffers(exported: dict) -> None:
    model = onnx.load(str(exported["out"] / ONNX_FILE))
    names = [init.name for init in model.graph.initializer]
    assert not [n for n in names if "weight_orig" in n or "weight_mask" in n]
    report = exported["report"]
    # The state dict (weights, BatchNorm statistics); the window and the DFT bases are computed
    # inside the graph, so nothing else is stored.
    assert report["onnx_initializer_values"] == report["state_dict_values"]
    assert report["onnx_bytes"] < 4 * report["state_dict_values"] + 300_000  # + the graph (Scan bodies included)


def test_a_second_export_writes_the_same_bytes(exported: dict, tmp_path) -> None:
    """`dvc repro -f export` must leave the evaluate stage up to date: the output is a pure function
    of the checkpoint and the settings."""
    export_onnx(exported["ckpt"], tmp_path / "again", EXPORT_CFG, AUDIO)
    assert (tmp_path / "again" / ONNX_FILE).read_bytes() == (exported["out"] / ONNX_FILE).read_bytes()
    first, second = (json.loads((d / REPORT_FILE).read_text()) for d in (exported["out"], tmp_path / "again"))
    assert {**first, "onnx_file": ""} == {**second, "onnx_file": ""}  # the path names the folder


def test_report_and_export_json(exported: dict) -> None:
    report = exported["report"]
    on_disk = json.loads((exported["out"] / REPORT_FILE).read_text())
    assert report["export_seconds"] > 0 and "export_seconds" not in on_disk  # timings: metrics/ only
    assert on_disk == json.loads(json.dumps({k: v for k, v in report.items() if k != "export_seconds"}))
    assert report["onnx_bytes"] == (exported["out"] / ONNX_FILE).stat().st_size
    assert 0 < report["onnx_zip_bytes"] < report["onnx_bytes"]
    assert report["params_nonzero"] < report["params_total"]
    assert report["sparsity"] > 0.1  # 30 % of the conv weights, which are most of the tiny model
    assert report["opset"] == 18 and "dynamo" in report["exporter"]
    assert not list(exported["out"].glob(".*.tmp"))


# From N = 2: a 1-sample input, zero-padded to n_fft, is a lone impulse, and the frame centred a quarter
# of n_fft after it has exactly real bins, half of them negative. Their phase is ±pi, and which one
# torch.stft's rounding noise (~1e-8, its sign set by the FFT library and the CPU) picks is arbitrary
# (the DFT path's imaginary parts there are exactly 0: +pi); the model takes the phase as an input, so
# its outputs then differ by ~1e-2, both equally valid. test_one_sample_input checks what holds at N = 1.
@pytest.mark.parametrize("n", [2, 399, 16001])
def test_dft_transforms_equal_torch_stft_in_pytorch(exported: dict, n: int) -> None:
    """The exportable front end (DFT-basis convolutions) gives what torch.stft / istft give, in eager mode."""
    generator = exported["generator"]
    x = np.stack([parity_signal(n, 16000, seed=7), 0.3 * parity_signal(n, 16000, seed=8)])
    with torch.inference_mode(), dft_transforms():
        got = generator.export_module().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, reference(generator, x), atol=2e-5, rtol=0)


def test_one_sample_input(exported: dict) -> None:
    """N = 1: finite output of one sample; ONNX Runtime equals the DFT path it was exported from; the
    torch.stft spectrum is the same up to the phase branch (equal modulo 2 pi), see the comment above."""
    generator, front = exported["generator"], exported["generator"].frontend
    x = np.stack([parity_signal(1, 16000, seed=7), 0.3 * parity_signal(1, 16000, seed=8)])
    with torch.inference_mode(), dft_transforms():
        got = generator.export_module().eval()(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1) and np.isfinite(got).all() and np.isfinite(reference(generator, x)).all()
    session = onnx_session(exported["out"] / ONNX_FILE)
    np.testing.assert_allclose(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], got, atol=1e-4, rtol=0)
    with torch.inference_mode():
        wav = front.pad(front.normalise(torch.from_numpy(x))[0])
        mag, pha, _ = front.analyse(wav)
        with dft_transforms():
            mag_dft, pha_dft, _ = front.analyse(wav)
    assert (mag_dft - mag).abs().max() <= 1e-6
    assert (torch.remainder(pha_dft - pha + torch.pi, 2 * torch.pi) - torch.pi).abs().max() <= 1e-5


def test_parity_failure_raises_with_numbers_and_keeps_old_file(exported: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import effifusion.inference.export as export_mod

    cached = onnx.load(str(exported["out"] / ONNX_FILE))
    monkeypatch.setattr(export_mod, "export_graph", lambda generator, opset: cached)  # skip re-exporting
    out = tmp_path / "onnx"
    out.mkdir()
    (out / ONNX_FILE).write_bytes(b"previous export")
    with pytest.raises(ExportError, match=r"differs from the model's enhance\(\) by up to .*0\.25: "):
        export_onnx(exported["ckpt"], out,
                    replace(EXPORT_CFG, parity_lengths_s=(0.25,), parity_tolerance=1e-12), AUDIO)
    assert (out / ONNX_FILE).read_bytes() == b"previous export"
    assert sorted(p.name for p in out.iterdir()) == [ONNX_FILE]


@pytest.mark.parametrize("cfg,match", [
    ({"opset": 11}, "export.opset"),
    ({"parity_lengths_s": []}, "export.parity_lengths_s"),
    ({"parity_tolerance": 0}, "export.parity_tolerance"),
])
def test_bad_export_settings_are_config_errors(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):  # the schema's check (core/params.py), before any export
        parse_section(ExportConfig, {**EXPORT_CFG.to_dict(), **cfg})


def test_sample_rate_must_match_the_checkpoint(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trained at 16000 Hz, but params.yaml has audio.sample_rate = 8000"):
        export_onnx(exported["ckpt"], tmp_path, EXPORT_CFG, AudioConfig(8000))


def test_missing_checkpoint_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model checkpoint not found"):
        export_onnx(tmp_path / "nope.pt", tmp_path, EXPORT_CFG, AUDIO)


def test_log_to_mlflow(exported: dict, tmp_path: Path) -> None:
    import mlflow

    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_to_mlflow(exported["out"] / ONNX_FILE, exported["report"])
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("export-test", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            log_to_mlflow(exported["out"] / ONNX_FILE, exported["report"])
        models = mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
        metrics = mlflow.get_run(run.info.run_id).data.metrics
        assert len(models) == 1
        loaded = mlflow.pyfunc.load_model(models[0].model_uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert metrics["export/onnx_bytes"] == exported["report"]["onnx_bytes"]
    assert metrics["export/onnx_zip_bytes"] == exported["report"]["onnx_zip_bytes"]
    spec = loaded.metadata.signature.inputs.inputs[0]
    assert spec.name == INPUT_NAME and spec.shape == (-1, -1)
    x = parity_signal(3000, 16000)[None]
    out = loaded.predict({INPUT_NAME: x})[OUTPUT_NAME]
    np.testing.assert_allclose(out, reference(exported["generator"], x), atol=1e-4, rtol=0)


def test_export_variant_takes_section_mappings_and_keys_on_the_files_values(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import effifusion.inference.export as export_mod

    calls = []

    def fake_export(checkpoint, out_dir, export, audio, name, val_items):
        calls.append((export, audio))
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_bytes(b"graph")
        return {"onnx_file": str(out_dir / name)}

    monkeypatch.setattr(export_mod, "export_onnx", fake_export)
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    section = {"opset": 18, "parity_lengths_s": [1, 0.5], "parity_tolerance": 0.0001, "sampler": {},
               "precision": "fp32"}
    report, how = export_mod.export_variant("pruned", ckpt, tmp_path / "onnx", section, {"sample_rate": 16000})
    assert how == "exported" and calls[0] == (ExportConfig(18, (1.0, 0.5), 1e-4), AUDIO)
    assert report["key"]["export"] == section  # as params.yaml wrote it
    typed = parse_section(ExportConfig, section)
    assert export_mod.export_variant("pruned", ckpt, tmp_path / "onnx", typed, AUDIO)[1] == "reused"
    with pytest.raises(ConfigError, match="export.opset"):
        export_mod.export_variant("pruned", ckpt, tmp_path / "onnx", {**section, "opset": 11}, AUDIO)
