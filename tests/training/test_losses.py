import math

import numpy as np
import pytest
import torch

from effifusion.core.errors import ConfigError
from effifusion.dsp.stft import StftFrontEnd
from effifusion.training.losses import (
    LOSS_TERMS,
    anti_wrapping,
    discriminator_loss,
    generator_losses,
    pesq_to_target,
    phase_losses,
)

PI = math.pi
WEIGHTS = {"metric": 0.05, "magnitude": 0.9, "phase": 0.3, "complex": 0.2, "time": 0.2, "consistency": 0.2}


def _spectra(wav: torch.Tensor):
    mag, pha, com = StftFrontEnd().analyse(wav)
    return mag, pha, com


@pytest.mark.parametrize(
    "x, expected",
    [(0.0, 0.0), (PI, PI), (-PI, PI), (2 * PI, 0.0), (3 * PI, PI), (-3 * PI / 2, PI / 2), (PI / 2, PI / 2),
     (-PI / 3, PI / 3), (5 * PI / 2, PI / 2), (-4 * PI + 0.1, 0.1), (7.0, 7.0 - 2 * PI)],
)
def test_anti_wrapping_values(x, expected):
    got = anti_wrapping(torch.tensor([x], dtype=torch.float64))
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_anti_wrapping_range():
    x = torch.linspace(-20, 20, 10001, dtype=torch.float64)
    y = anti_wrapping(x)
    assert y.min() >= 0 and y.max() <= PI + 1e-12


def test_phase_losses_zero_for_identical_and_invariant_to_2pi_shifts():
    g = torch.Generator().manual_seed(0)
    pha = (torch.rand(2, 201, 30, generator=g, dtype=torch.float64) * 2 - 1) * PI
    assert all(v.item() == 0.0 for v in phase_losses(pha, pha))
    k = torch.randint(-3, 4, pha.shape, generator=g).to(torch.float64)
    shifted = pha + 2 * PI * k
    assert all(v.item() < 1e-12 for v in phase_losses(pha, shifted))
    est = pha + 0.3 * torch.randn(pha.shape, generator=g, dtype=torch.float64)
    base = phase_losses(pha, est)
    wrapped = phase_losses(pha, est + 2 * PI * k)
    for a, b in zip(base, wrapped):
        assert a.item() > 0.05
        assert a.item() == pytest.approx(b.item(), abs=1e-9)


def test_phase_losses_axes():
    # A phase offset that only varies along time leaves the group delay (frequency difference) at 0.
    pha = torch.zeros(1, 5, 7)
    est = torch.linspace(0, 1, 7).expand(1, 5, 7).clone()
    ip, gd, iaf = phase_losses(pha, est)
    assert gd.item() == 0.0 and iaf.item() == pytest.approx(1 / 6, rel=1e-5) and ip.item() > 0


def test_generator_losses_zero_for_identical_inputs():
    wav = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    mag, pha, com = _spectra(wav)
    out = generator_losses(wav, wav, mag, pha, com, mag, pha, com, com, torch.ones(2, 1), WEIGHTS)
    assert set(out) == set(LOSS_TERMS) | {"total"}
    for k, v in out.items():
        assert v.item() == 0.0, k


def test_generator_losses_terms_and_total():
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(2, 4000, generator=g)
    est = clean + 0.1 * torch.randn(2, 4000, generator=g)
    cm, cp, cc = _spectra(clean)
    em, ep, ec = _spectra(est)
    ec_cons = _spectra(StftFrontEnd().synthesise(em * 1.1, ep, length=4000))[2]
    score = torch.tensor([[0.5], [0.7]])
    out = generator_losses(clean, est, cm, cp, cc, em, ep, ec, ec_cons, score, WEIGHTS)
    assert out["metric"].item() == pytest.approx((0.25 + 0.09) / 2)
    assert out["magnitude"].item() == pytest.approx(torch.mean((cm - em) ** 2).item())
    assert out["complex"].item() == pytest.approx(torch.mean((cc - ec) ** 2).item())
    assert out["time"].item() == pytest.approx(torch.mean(torch.abs(clean - est)).item())
    assert out["consistency"].item() == pytest.approx(torch.mean((ec - ec_cons) ** 2).item())
    assert out["phase"].item() == pytest.approx(sum(v.item() for v in phase_losses(cp, ep)))
    for k in LOSS_TERMS:
        assert out[k].item() > 0, k
    total = sum(WEIGHTS[k] * out[k].item() for k in LOSS_TERMS)
    assert out["total"].item() == pytest.approx(total, rel=1e-6)


def test_generator_losses_gradient_flows_and_metric_optional():
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(1, 2000, generator=g)
    est = (clean + 0.1 * torch.randn(1, 2000, generator=g)).requires_grad_()
    cm, cp, cc = _spectra(clean)
    em, ep, ec = _spectra(est)
    weights = dict(WEIGHTS, metric=0.0)
    out = generator_losses(clean, est, cm, cp, cc, em, ep, ec, ec.detach(), None, weights)
    assert out["metric"].item() == 0.0
    out["total"].backward()
    assert est.grad is not None and torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="metric_score"):
        generator_losses(clean, est, cm, cp, cc, em, ep, ec, ec, None, WEIGHTS)


def test_generator_losses_refuses_bad_weights_and_shapes():
    wav = torch.randn(1, 2000)
    mag, pha, com = _spectra(wav)
    with pytest.raises(ConfigError, match="loss_weights.*consistency"):
        generator_losses(wav, wav, mag, pha, com, mag, pha, com, com, None,
                         {k: v for k, v in WEIGHTS.items() if k != "consistency"})
    with pytest.raises(ConfigError, match="loss_weights.stft: unknown setting"):
        generator_losses(wav, wav, mag, pha, com, mag, pha, com, com, torch.ones(1), dict(WEIGHTS, stft=0.1))
    with pytest.raises(ValueError, match="waveform loss: shapes differ"):
        generator_losses(wav, wav[:, :1900], mag, pha, com, mag, pha, com, com, torch.ones(1), WEIGHTS)


def test_discriminator_loss_with_and_without_pesq_target():
    d_real = torch.tensor([[0.9], [0.8]])
    d_fake = torch.tensor([[0.5], [0.2]])
    real_only = discriminator_loss(d_real, d_fake, None)
    assert real_only.item() == pytest.approx((0.01 + 0.04) / 2)
    assert discriminator_loss(d_real, None, None).item() == pytest.approx(real_only.item())
    target = pesq_to_target([2.75, 1.0])  # -> 0.5, 0.0
    both = discriminator_loss(d_real, d_fake, target)
    assert both.item() == pytest.approx((0.01 + 0.04) / 2 + (0.0 + 0.04) / 2)
    with pytest.raises(ValueError, match="PESQ targets"):
        discriminator_loss(d_real, d_fake, torch.tensor([0.5]))


def test_pesq_to_target():
    t = pesq_to_target(np.array([1.0, 4.5, 2.75]))
    assert t.dtype == torch.float32
    assert torch.allclose(t, torch.tensor([0.0, 1.0, 0.5]))
    assert pesq_to_target([3.0, float("nan")]) is None
    assert pesq_to_target(torch.tensor([float("nan")])) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_on_cuda():
    wav = torch.randn(2, 4000, device="cuda")
    mag, pha, com = _spectra(wav)
    score = torch.ones(2, 1, device="cuda")
    out = generator_losses(wav, wav, mag, pha, com, mag, pha, com, com, score, WEIGHTS)
    assert out["total"].device.type == "cuda" and out["total"].item() == 0.0
    d = torch.full((2, 1), 0.5, device="cuda")
    assert discriminator_loss(d, d, pesq_to_target([2.75, 2.75])).item() == pytest.approx(0.25)
