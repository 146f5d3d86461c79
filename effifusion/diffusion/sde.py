"""The Ornstein-Uhlenbeck variance-exploding SDE of SGMSE+ (Richter et al. 2023, sp-uhh/sgmse sdes.py):

    dx = θ (y − x) dt + g(t) dw,   g(t) = σ_min (σ_max/σ_min)^t · sqrt(2 ln(σ_max/σ_min)),   t ∈ [0, 1]

drifting from clean speech x₀ at t = 0 toward the noisy mixture y. Its marginal is Gaussian:
mean e^{−θt} x₀ + (1 − e^{−θt}) y, variance σ_min² (e^{2(θ+L)t} − 1) L / (θ + L) · e^{−2θt},
L = ln(σ_max/σ_min). The formulas use only arithmetic operators, so ``t`` may be a float, a numpy
array or a torch tensor (the training task passes tensors, the sampler floats).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

T_MAX = 1.0  # the process runs over [0, 1]; sampling starts at T_MAX


@dataclass(frozen=True)
class OuveSde:
    theta: float = 1.5        # stiffness θ of the drift toward y
    sigma_min: float = 0.05
    sigma_max: float = 0.5
    t_eps: float = 0.03       # smallest time trained on and sampled to (the score diverges at 0)

    KEYS = ("theta", "sigma_min", "sigma_max", "t_eps")

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "OuveSde":
        return cls(**{k: float(cfg[k]) for k in cls.KEYS})

    def config(self) -> dict[str, float]:
        return asdict(self)

    @property
    def log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def mean_weight(self, t: Any) -> Any:
        """e^{−θt}: the weight of x₀ in the mean (1 − it is y's)."""
        return math.e ** (-self.theta * t)

    def mean(self, x0: Any, y: Any, t: Any) -> Any:
        w = self.mean_weight(t)
        return w * x0 + (1 - w) * y

    def std(self, t: Any) -> Any:
        lr, th = self.log_ratio, self.theta
        return (self.sigma_min ** 2 * math.e ** (-2 * th * t) * (math.e ** (2 * (th + lr) * t) - 1)
                * lr / (th + lr)) ** 0.5

    def drift(self, x: Any, y: Any) -> Any:
        return self.theta * (y - x)

    def diffusion(self, t: Any) -> Any:
        """g(t)."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t * math.sqrt(2 * self.log_ratio)
