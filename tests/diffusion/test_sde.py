"""The OUVE SDE's closed forms against its defining ODEs, and the score-matching loss on a Gaussian case."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from effifusion.diffusion.sde import OuveSde
from effifusion.training.tasks.score_matching import score_loss


def test_mean_and_variance_solve_the_moment_odes():
    sde = OuveSde()
    x0, y = 0.3, -0.8
    # dm/dt = θ(y − m), dv/dt = −2θv + g(t)², m(0) = x0, v(0) = 0
    def rhs(t, s):
        return [sde.theta * (y - s[0]), -2 * sde.theta * s[1] + sde.diffusion(t) ** 2]
    ts = [0.03, 0.2, 0.5, 0.9, 1.0]
    sol = solve_ivp(rhs, (0, 1), [x0, 0.0], t_eval=ts, rtol=1e-10, atol=1e-12)
    for i, t in enumerate(ts):
        assert sde.mean(x0, y, t) == pytest.approx(sol.y[0, i], rel=1e-7)
        assert sde.std(t) ** 2 == pytest.approx(sol.y[1, i], rel=1e-6)


def test_closed_forms_take_floats_arrays_and_tensors_alike():
    sde = OuveSde()
    t = [0.1, 0.5, 1.0]
    a = np.array([sde.std(v) for v in t])
    assert np.allclose(sde.std(np.array(t)), a)
    assert np.allclose(sde.std(torch.tensor(t, dtype=torch.float64)).numpy(), a)
    assert sde.std(0.0) == 0.0 and sde.mean_weight(0.0) == 1.0
    assert sde.std(1.0) == pytest.approx(0.3890, abs=1e-4)  # the prior's spread, σ(1)


def test_score_loss_is_minimised_by_the_true_score_of_a_gaussian():
    """x0 ~ N(μ, v0) per part, x_t = mean + σ z with complex z of variance 1 (½ per part): x_t is complex
    Gaussian with total variance V = 2 w² v0 + σ², and its score (complex convention, as SGMSE+) is
    −(x_t − m_t) / V. Scaled versions of it give a larger loss; the minimum is ½ − σ²/(2V) per bin."""
    sde, g = OuveSde(), torch.Generator().manual_seed(0)
    n, v0, mu, yv, t = 200_000, 0.04, 0.2, -0.5, 0.4
    x0 = mu + math.sqrt(v0) * torch.randn(n, 2, 1, 1, generator=g)
    z = torch.randn(n, 2, 1, 1, generator=g) * math.sqrt(0.5)
    std = torch.tensor(sde.std(t))
    x_t = sde.mean(x0, torch.full_like(x0, yv), t) + std * z
    total = 2 * sde.mean_weight(t) ** 2 * v0 + float(std) ** 2
    true = -(x_t - sde.mean(mu, yv, t)) / total
    losses = {a: float(score_loss(a * true, z, std)) for a in (0.8, 0.9, 1.0, 1.1, 1.25)}
    assert min(losses, key=losses.get) == 1.0
    assert losses[1.0] == pytest.approx(0.5 - float(std) ** 2 / (2 * total), rel=0.01)
