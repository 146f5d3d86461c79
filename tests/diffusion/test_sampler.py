"""The predictor-corrector sampler: determinism, cost accounting, fusions, settings, and the numpy STFT."""

import numpy as np
import pytest
import torch

from effifusion.diffusion import spectrum
from effifusion.diffusion.sampler import SamplerSettings, sample, sample_parts
from effifusion.diffusion.sde import OuveSde


class Net:
    """A stand-in network that counts its calls: score pulls x toward 0.5·y, x̂ = 0.5·y."""

    def __init__(self):
        self.calls = 0

    def score(self, x, y, t):
        self.calls += 1
        return (0.5 * y - x) / (0.1 + t[:, None, None])

    def predict(self, y):
        self.calls += 1
        return 0.5 * y


Y = (np.random.default_rng(1).standard_normal((2, 8, 16)) + 1j).astype(np.complex64)


@pytest.mark.parametrize("mode, first, final, start, evals", [
    ("generative", False, False, 0, 2 * 6), ("predictive", False, False, 0, 1),
    ("joint", True, True, 3, 1 + 2 * 3), ("joint", False, True, 0, 1 + 2 * 6)])
def test_same_seed_same_output_and_counted_evaluations(mode, first, final, start, evals):
    s = SamplerSettings(mode=mode, steps=6, first_fusion=first, final_fusion=final, start_step=start, seed=3)
    assert s.problem(has_predictive=True) is None
    net = Net()
    a = sample(net.score, net.predict, Y, OuveSde(), s)
    assert net.calls == evals == s.evaluations()
    b = sample(net.score, net.predict, Y, OuveSde(), s)
    assert a.dtype == np.complex64 and a.shape == Y.shape and np.array_equal(a, b)
    if mode != "predictive":
        c = sample(net.score, net.predict, Y, OuveSde(), SamplerSettings(**{**s.config(), "seed": 4}))
        assert not np.allclose(a, c)


def test_final_fusion_weights_blend_the_two_outputs():
    net = Net()
    base = dict(mode="joint", steps=4, first_fusion=True, start_step=2, seed=0)
    gen = sample(net.score, net.predict, Y, OuveSde(), SamplerSettings(**base, final_fusion=False))
    fused = sample(net.score, net.predict, Y, OuveSde(),
                   SamplerSettings(**base, final_fusion=True, fusion_alpha=0.25, fusion_beta=0.9))
    assert np.allclose(fused, 0.25 * gen + 0.9 * 0.5 * Y, atol=1e-6)
    parts = sample_parts(net.score, net.predict, Y, OuveSde(), SamplerSettings(**base))
    assert np.array_equal(parts[0], gen) and np.allclose(parts[1], 0.5 * Y)


@pytest.mark.parametrize("change, message", [
    ({"mode": "joint"}, "needs a predictive decoder"), ({"steps": 0}, "steps"),
    ({"start_step": 6}, "start_step"), ({"fusion_alpha": float("nan")}, "fusion_alpha"),
    ({"fusion_beta": True}, "fusion_beta"),
    ({"mode": "gan"}, "mode")])
def test_bad_settings_are_named(change, message):
    assert message in SamplerSettings(**{"steps": 6, **change}).problem(has_predictive=False)


def test_numpy_stft_matches_torch_and_inverts():
    x = np.random.default_rng(0).standard_normal((2, 4000)).astype(np.float32)
    ours = spectrum.stft(x, 510, 128)
    ref = torch.stft(torch.from_numpy(x), 510, 128, window=torch.hann_window(510), center=True, pad_mode="reflect",
                     return_complex=True).numpy()
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-4
    assert np.abs(spectrum.istft(ours, 510, 128, 4000) - x).max() < 1e-5
    c = spectrum.compress(ours, 0.5, 0.15)
    assert np.allclose(spectrum.expand(c, 0.5, 0.15), ours, rtol=1e-4, atol=1e-5)
