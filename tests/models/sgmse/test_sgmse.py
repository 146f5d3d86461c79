"""SGMSE+ and the joint model: sizes, NCSN++'s FIR resampling, the front end, the contract, export."""

import numpy as np
import pytest
import torch

from effifusion.core.errors import ConfigError
from effifusion.diffusion import spectrum
from effifusion.models.registry import build_model, load_checkpoint, save_checkpoint
from effifusion.models.sgmse.layers import FIR, fir_down, fir_up
from effifusion.models.sgmse.model import gp_sgmse_config, sgmse_config


def small(arch="gp_sgmse", **sampler):
    cfg = gp_sgmse_config() if arch == "gp_sgmse" else sgmse_config()
    s = {**cfg["sampler"], "steps": 4, **({"start_step": 2} if arch == "gp_sgmse" else {}), **sampler}
    return {**cfg, "nf": 8, "ch_mult": [1, 2, 2], "res_blocks": 1, "attn_resolutions": [64], "sampler": s}


@pytest.mark.parametrize("config, expected, published, tolerance", [
    (sgmse_config(), 65_590_694, 65.6e6, 0.03), (gp_sgmse_config(), 106_782_668, 106e6, 0.05)])
def test_paper_sizes(config, expected, published, tolerance):
    model = build_model(config, 16000)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected and abs(n / published - 1) <= tolerance


def upfirdn2d(x, k, up, down, pad):
    """Reference upfirdn2d (zero insertion, padding, convolution with k, decimation) in numpy."""
    b, c, h, w = x.shape
    u = np.zeros((b, c, h * up, w * up), x.dtype)
    u[:, :, ::up, ::up] = x
    u = np.pad(u, ((0, 0), (0, 0), pad, pad))
    kf = k[::-1, ::-1]
    kh, kw = k.shape
    out = np.zeros((b, c, u.shape[2] - kh + 1, u.shape[3] - kw + 1), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out += kf[i, j] * u[:, :, i:i + out.shape[2], j:j + out.shape[3]]
    return out[:, :, ::down, ::down]


def test_fir_resampling_is_upfirdn2d():
    k = np.outer(FIR, FIR)
    k = (k / k.sum()).astype(np.float32)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 12)).astype(np.float32)
    down = fir_down(torch.from_numpy(x)).numpy()
    up = fir_up(torch.from_numpy(x)).numpy()
    assert down.shape == (1, 3, 4, 6) and up.shape == (1, 3, 16, 24)
    assert np.abs(down - upfirdn2d(x, k, 1, 2, (1, 1))).max() < 1e-5
    assert np.abs(up - upfirdn2d(x, 4 * k, 2, 1, (2, 1))).max() < 1e-5


def test_the_training_spectrogram_is_the_runtimes():
    model = build_model(small(), 16000)
    x = np.random.default_rng(1).standard_normal((1, 5000)).astype(np.float32) * 0.3
    ours = model.spectrogram(torch.from_numpy(x)).numpy()
    ref = spectrum.as_channels(spectrum.compress(spectrum.stft(x, 510, 128), 0.5, 0.15))
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("n", [1, 300, 4001])
def test_enhance_any_length_deterministically(n):
    torch.manual_seed(0)
    model = build_model(small(), 16000).eval()
    x = torch.randn(1, n) * 0.1
    with torch.inference_mode():
        a, b = model.enhance(x), model.enhance(x)
    assert a.shape == x.shape and torch.isfinite(a).all() and torch.equal(a, b)


def test_every_sampler_mode_runs_and_is_counted():
    model = build_model(small(), 16000).eval()
    x = torch.randn(1, 4000) * 0.1
    outs = {}
    for mode in ("generative", "predictive", "joint"):
        kw = {"mode": mode, "start_step": 2 if mode == "joint" else 0, "first_fusion": mode == "joint"}
        model.with_sampler(**kw)
        with torch.inference_mode():
            outs[mode] = model.enhance(x)
        assert model.macs(32)["evaluations"] == {"generative": 8, "predictive": 1, "joint": 5}[mode]
    assert not torch.allclose(outs["generative"], outs["predictive"])
    with pytest.raises(ConfigError, match="sampler.mode"):
        build_model(small("sgmse"), 16000).with_sampler(mode="joint")


@pytest.mark.parametrize("key, value, message", [
    ("nf", 6, "model.nf"), ("ch_mult", [], "model.ch_mult"), ("n_fft", 512, "model.n_fft"),
    ("sde", {"theta": 1.5, "sigma_min": 0.5, "sigma_max": 0.05, "t_eps": 0.03}, "model.sde.sigma_max"),
    ("sampler", {"mode": "joint"}, "model.sampler.steps: missing")])
def test_bad_config_is_one_line(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_model({**small(), key: value}, 16000)


def test_checkpoint_round_trip_keeps_weights_and_sampler(tmp_path):
    model = build_model(small(), 16000)
    model.with_sampler(steps=6, seed=7)
    save_checkpoint(tmp_path / "m.pt", model)
    again, _ = load_checkpoint(tmp_path / "m.pt")
    assert again.sampler == model.sampler and again.config() == model.config()
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
