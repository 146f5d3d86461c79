"""The SAF-like model (models/saf): size, shapes at any length, gradients, export parity, config, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from effifusion.core.config import read_params
from effifusion.core.errors import ConfigError
from effifusion.core.settings import AudioConfig, ExportConfig
from effifusion.inference.export import INPUT_NAME, ONNX_FILE, export_onnx, onnx_session, parity_signal
from effifusion.models import registry
from effifusion.models.saf import MODEL
from effifusion.models.saf.model import LocalFrequencyAttention, demo_config, paper_config
from helpers import ROOT

PAPER_PARAMS = 580_000  # [ABS] 0.58 M


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def demo() -> MODEL:
    torch.manual_seed(0)
    return registry.build_model(demo_config(), 16000).eval()


def test_registered_and_presets_match_the_configs():
    assert registry.model_class("saf") is MODEL
    for name, cfg in (("saf", paper_config()), ("saf-demo", demo_config())):
        preset = read_params(ROOT / "presets" / f"{name}.yaml")
        assert preset["model"] == cfg and preset["preset"] == name


def test_paper_size_is_0_58_m_parameters():
    model = registry.build_model(paper_config(), 16000)
    assert abs(n_params(model) - PAPER_PARAMS) <= 0.03 * PAPER_PARAMS, n_params(model)


def test_demo_size_is_small(demo):
    assert 50_000 <= n_params(demo) <= 100_000


@pytest.mark.parametrize("n", [1, 399, 16000 + 37])
def test_enhance_keeps_shape_at_odd_lengths(demo, n):
    wav = torch.randn(2, n) * 0.1
    with torch.no_grad():
        out = demo.enhance(wav)
    assert out.shape == (2, n) and torch.isfinite(out).all()


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_forward_at_a_few_frames(demo, frames):
    mag, pha = torch.rand(1, demo.n_bins, frames), (torch.rand(1, demo.n_bins, frames) - 0.5) * 6
    with torch.no_grad():
        out_mag, out_pha, out_com = demo(mag, pha)
    assert out_mag.shape == out_pha.shape == (1, demo.n_bins, frames) and out_com.shape == (1, demo.n_bins, frames, 2)
    assert torch.isfinite(out_com).all()


def test_outputs_are_consistent_and_gradients_finite():
    torch.manual_seed(1)
    model = registry.build_model({**demo_config(), "phase_input": "raw"}, 16000).train()
    mag, pha, _ = model.frontend.analyse(torch.randn(2, 3001) * 0.1)
    mag = mag.clone()
    mag[:, :, 0] = 0.0  # silent frame: the estimate may land on 0, where |S| and atan2 need their epsilons
    out_mag, out_pha, out_com = model(mag, pha)
    torch.testing.assert_close(out_com, torch.stack((out_mag * torch.cos(out_pha), out_mag * torch.sin(out_pha)), -1))
    assert (out_mag > 0).all() and (out_pha.abs() <= torch.pi).all()
    (out_mag.pow(2).mean() + out_com.pow(2).mean() + torch.cos(out_pha).mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_local_attention_equals_band_masked_full_attention():
    """Each bin attends to itself and its ±1 neighbours: the same as softmax attention along frequency
    with scores outside |i - j| <= 1 masked out (the LSA formulation), edges included."""
    torch.manual_seed(2)
    c, heads, t, f = 8, 2, 3, 7
    lfa = LocalFrequencyAttention(c, heads, 3).eval()
    x = torch.randn(2, c, t, f)
    with torch.no_grad():
        got = lfa(x)
        q, k, v = lfa.qkv_conv(lfa.norm(x)).reshape(2, 3, heads, c // heads, t, f).unbind(1)
        scores = torch.einsum("bhdti,bhdtj->bhtij", q, k) * (c // heads) ** -0.5
        idx = torch.arange(f)
        scores = scores.masked_fill((idx[:, None] - idx[None, :]).abs() > 1, float("-inf"))
        out = torch.einsum("bhtij,bhdtj->bhdti", scores.softmax(-1), v).reshape(2, c, t, f)
        torch.testing.assert_close(got, lfa.proj_conv(out), atol=1e-5, rtol=1e-5)


def test_macs_count_every_conv_and_grow_linearly(demo):
    """The analytic count = the convs' MACs measured by hooks on a real forward + the local attention."""
    counted = 0

    def hook(conv, inputs, output):
        nonlocal counted
        k = int(np.prod(conv.kernel_size)) * conv.in_channels * conv.out_channels // conv.groups
        counted += k * int(np.prod((inputs[0] if isinstance(conv, nn.ConvTranspose2d) else output).shape[2:]))

    handles = [m.register_forward_hook(hook) for m in demo.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    frames = 7
    with torch.no_grad():
        demo(torch.rand(1, demo.n_bins, frames), torch.rand(1, demo.n_bins, frames))
    for h in handles:
        h.remove()
    macs = demo.macs(frames)
    assert macs["total"] == counted + macs["local_attention_matmuls"]
    assert demo.macs(2 * frames)["total"] == 2 * macs["total"]


def test_onnx_export_parity(demo, tmp_path):
    registry.save_checkpoint(tmp_path / "saf.pt", demo)
    report = export_onnx(tmp_path / "saf.pt", tmp_path / "onnx", ExportConfig(18, (0.25, 1.2345625), 1e-4),
                         AudioConfig(16000))
    assert report["onnx_parity_max_abs"] <= 1e-4
    session = onnx_session(tmp_path / "onnx" / ONNX_FILE)
    x = np.stack([parity_signal(n, 16000, seed=3) for n in (123, 123)])  # batch 2, shorter than n_fft
    got = session.run(None, {INPUT_NAME: x})[0]
    with torch.inference_mode():
        expected = demo.enhance(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 123) and np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("key, value", [
    ("local_bands", 2), ("num_heads", 3), ("phase_input", "polar"), ("tcn_hidden", 0), ("beta", -1.0),
    ("n_fft", 402), ("bogus", 1),
])
def test_config_check_names_the_bad_key(key, value):
    with pytest.raises(ConfigError, match=rf"^params\.yaml model\.{key}: "):
        registry.check_model_config({**paper_config(), key: value})


def test_config_check_names_a_missing_key():
    cfg = paper_config()
    del cfg["tcn_kernel"]
    with pytest.raises(ConfigError, match=r"^params\.yaml model\.tcn_kernel: missing setting"):
        registry.build_model(cfg, 16000)


def test_checkpoint_round_trip(demo, tmp_path):
    registry.save_checkpoint(tmp_path / "saf.pt", demo, extra={"epoch": 3})
    loaded, extra = registry.load_checkpoint(tmp_path / "saf.pt")
    assert isinstance(loaded, MODEL) and loaded.config() == demo.config() == demo_config() and extra == {"epoch": 3}
    wav = torch.randn(1, 4001) * 0.1
    with torch.no_grad():
        assert torch.equal(demo.enhance(wav), loaded.enhance(wav))


def test_trainer_runs_saf_and_names_the_run(tmp_path):
    """One epoch of the metric-GAN objective on a tiny SAF (the shared trainer, losses and checkpoint)."""
    from effifusion.tracking.runs import run_name
    from effifusion.training.stages import train_dense
    from helpers import make_prepared, tiny_params

    params = tiny_params(train__epochs=1)
    params["model"] = {**demo_config(), "channels": 8, "num_saf_blocks": 1, "tcn_layers": 2, "tcn_hidden": 8}
    assert run_name("train", params) == "train-saf-C8"
    prepared = make_prepared(tmp_path / "prepared", n_train=4, n_val=2)
    m = train_dense(params, prepared_dir=prepared, out_dir=tmp_path / "m", metrics_path=tmp_path / "m.json",
                    plots_dir=tmp_path / "p", resume_dir=tmp_path / "ck", track=False)
    assert m["steps"] == 2
    loaded, _ = registry.load_checkpoint(tmp_path / "m" / "model.pt")
    assert isinstance(loaded, MODEL) and loaded.config() == params["model"]
