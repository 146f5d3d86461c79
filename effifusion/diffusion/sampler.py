"""The predictor-corrector sampler of SGMSE+, with the joint model's two fusions (numpy, torch-free).

Each of N steps over t = linspace(1, t_eps, N) runs the corrector (annealed Langevin, ``snr``, one or
more steps) and then the predictor (reverse diffusion, Euler-Maruyama), each one network evaluation;
the output is the last predictor mean (sp-uhh/sgmse sampling/__init__.py). ``mode`` picks the output:

- ``generative``: the reverse process from the prior y + σ(1) z — SGMSE+ (2·N NFEs with 1 corrector step);
- ``predictive``: the predictive decoder's estimate x̂ alone (1 NFE);
- ``joint``: x̂ first; with ``first_fusion`` the reverse process starts at step ``start_step`` from the
  marginal around x̂, e^{−θt}x̂ + (1 − e^{−θt})y + σ(t) z, instead of the prior [INF: the paper's
  "the predictive estimate initialises the reverse process", StoRM's recipe]; with ``final_fusion``
  the output is α·x_gen + β·x̂ (``fusion_alpha``, ``fusion_beta``: the paper's "learned weights",
  values not published; export fits them on validation data, inference/fusion_fit.py). Each is a
  number, or a list with one weight per frequency bin (what the export's fit writes).

``fusion_weight`` w, the single weight of earlier cards and checkpoints, still loads: it means
α = w, β = 1 − w (``settings_with`` translates it, in stored settings and in overrides alike).

Noise comes from numpy's generator seeded with ``seed`` at every call, so the same input, settings
and seed give the same output in PyTorch and in ONNX Runtime (up to the network's float rounding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Tuple, Union

import numpy as np

from effifusion.diffusion.sde import T_MAX, OuveSde

MODES = ("generative", "predictive", "joint")
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (x_t, y, t [B]) -> score, complex
PredictFn = Callable[[np.ndarray], np.ndarray]                         # y -> x̂, complex
Weight = Union[float, Tuple[float, ...]]                               # a fusion weight: one, or per bin


@dataclass(frozen=True)
class SamplerSettings:
    mode: str = "generative"
    steps: int = 30             # N
    snr: float = 0.5            # corrector step: 2 (snr · σ(t))²
    corrector_steps: int = 1
    first_fusion: bool = True   # joint: start around x̂ (else from the prior at t = 1)
    start_step: int = 0         # joint with first_fusion: the first of the N steps run (ignored otherwise)
    final_fusion: bool = True   # joint: output α·x_gen + β·x̂
    fusion_alpha: Weight = 0.5  # α, the generative output's weight: a number or one per frequency bin
    fusion_beta: Weight = 0.5   # β, the predictive estimate's weight
    seed: int = 0

    KEYS = ("mode", "steps", "snr", "corrector_steps", "first_fusion", "start_step", "final_fusion",
            "fusion_alpha", "fusion_beta", "seed")

    def __post_init__(self) -> None:
        for key in ("fusion_alpha", "fusion_beta"):  # per-bin weights as tuples: hashable, equal after JSON
            if isinstance(getattr(self, key), (list, tuple)):
                object.__setattr__(self, key, tuple(getattr(self, key)))

    def config(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("fusion_alpha", "fusion_beta"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    def problem(self, has_predictive: bool, bins: int | None = None) -> str | None:
        """What is wrong with these settings (key: reason), or None; ``bins``: the model's frequency bins,
        the length per-bin fusion weights must have."""
        def is_int(v: Any, lo: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= lo

        if self.mode not in MODES:
            return f"mode: {self.mode!r} is not one of {', '.join(MODES)}"
        if self.mode != "generative" and not has_predictive:
            return f"mode: {self.mode!r} needs a predictive decoder (arch gp_sgmse); this model has none"
        if not is_int(self.steps, 1):
            return f"steps: {self.steps!r} is not a positive integer"
        if not is_int(self.corrector_steps, 0):
            return f"corrector_steps: {self.corrector_steps!r} is not an integer >= 0"
        if not is_int(self.start_step, 0) or self.start_step >= self.steps:
            return f"start_step: {self.start_step!r} is not an integer in [0, steps)"
        if not (isinstance(self.snr, (int, float)) and not isinstance(self.snr, bool) and self.snr >= 0):
            return f"snr: {self.snr!r} is not a number >= 0"
        def finite(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))

        for key in ("fusion_alpha", "fusion_beta"):
            w = getattr(self, key)
            if isinstance(w, tuple):
                if not (w and all(finite(v) for v in w)):
                    return f"{key}: not a list of finite numbers (one weight per frequency bin)"
                if bins is not None and len(w) != bins:
                    return f"{key}: {len(w)} per-bin weights, but the model has {bins} frequency bins"
            elif not finite(w):
                return f"{key}: {w!r} is not a finite number or a list of them (one per frequency bin)"
        for key in ("first_fusion", "final_fusion"):
            if not isinstance(getattr(self, key), bool):
                return f"{key}: {getattr(self, key)!r} is not true or false"
        if not is_int(self.seed, 0):
            return f"seed: {self.seed!r} is not an integer >= 0"
        return None

    def evaluations(self) -> int:
        """Network evaluations per utterance (a predictive pass counts as one)."""
        if self.mode == "predictive":
            return 1
        start = self.start_step if self.mode == "joint" and self.first_fusion else 0
        return (self.steps - start) * (self.corrector_steps + 1) + (self.mode == "joint")


def settings_with(base: dict[str, Any], overrides: dict[str, Any] | None, has_predictive: bool,
                  where: str = "", bins: int | None = None) -> SamplerSettings:
    """``base`` with ``overrides`` applied key by key and checked; ConfigError "<where>sampler.<key>: ..."."""
    from effifusion.core.errors import ConfigError

    merged = {**_weights(base, where), **_weights(overrides or {}, where)}
    unknown = [k for k in merged if k not in SamplerSettings.KEYS]
    if unknown:
        raise ConfigError(f"{where}sampler.{unknown[0]}: unknown setting (known: {', '.join(SamplerSettings.KEYS)})")
    missing = [k for k in SamplerSettings.KEYS if k not in merged]
    if missing:
        raise ConfigError(f"{where}sampler.{missing[0]}: missing setting (needed: {', '.join(SamplerSettings.KEYS)})")
    settings = SamplerSettings(**merged)
    problem = settings.problem(has_predictive, bins)
    if problem:
        raise ConfigError(f"{where}sampler.{problem}")
    return settings


def _weights(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """``settings`` with a legacy ``fusion_weight`` w replaced by α = w, β = 1 − w (older cards and
    checkpoints, and overrides written for them, keep their meaning)."""
    from effifusion.core.errors import ConfigError

    if "fusion_weight" not in settings:
        return settings
    out = dict(settings)
    w = out.pop("fusion_weight")
    both = [k for k in ("fusion_alpha", "fusion_beta") if k in out]
    if both:
        raise ConfigError(f"{where}sampler.fusion_weight: set it or {both[0]}, not both "
                          "(fusion_weight w means fusion_alpha = w, fusion_beta = 1 - w)")
    if not (isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w <= 1):
        raise ConfigError(f"{where}sampler.fusion_weight: {w!r} is not a number in [0, 1]")
    return {**out, "fusion_alpha": float(w), "fusion_beta": 1.0 - float(w)}


def complex_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """z with independent real and imaginary parts of variance 1/2 (torch.randn_like on complex)."""
    re = rng.standard_normal(shape, dtype=np.float32)
    im = rng.standard_normal(shape, dtype=np.float32)
    return ((re + 1j * im) * np.float32(np.sqrt(0.5))).astype(np.complex64)


def sample(score_fn: ScoreFn, predict_fn: PredictFn | None, y: np.ndarray, sde: OuveSde,
           settings: SamplerSettings, on_step: Callable[[], None] | None = None) -> np.ndarray:
    """The enhanced compressed spectrogram for ``y`` (complex64 [B, F, T]); see the module docstring."""
    s = settings
    if s.mode == "predictive":
        return predict_fn(y.astype(np.complex64)).astype(np.complex64)
    x_gen, x_pred = sample_parts(score_fn, predict_fn, y, sde, s, on_step)
    if s.mode == "joint" and s.final_fusion:
        return fuse(x_gen, x_pred, s.fusion_alpha, s.fusion_beta)
    return x_gen


def fuse(x_gen: np.ndarray, x_pred: np.ndarray, alpha: Weight, beta: Weight) -> np.ndarray:
    """The final fusion α·x_gen + β·x̂ of [..., F, T] spectrograms (complex64); α, β numbers or [F]."""
    def weight(w: Weight) -> np.ndarray:
        w = np.asarray(w, dtype=np.float32)
        return w[:, None] if w.ndim else w

    return (weight(alpha) * x_gen + weight(beta) * x_pred).astype(np.complex64)


def sample_parts(score_fn: ScoreFn, predict_fn: PredictFn | None, y: np.ndarray, sde: OuveSde,
                 settings: SamplerSettings, on_step: Callable[[], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """(x_gen, x̂ or None): the reverse process's output and the predictive estimate before the final
    fusion, so that its weights can be fitted on the very outputs it combines (``mode`` not predictive)."""
    s = settings
    y = y.astype(np.complex64)
    batch = y.shape[0]
    x_pred = predict_fn(y).astype(np.complex64) if s.mode == "joint" else None
    rng = np.random.default_rng(s.seed)
    ts = np.linspace(T_MAX, sde.t_eps, s.steps)
    start = s.start_step if s.mode == "joint" and s.first_fusion else 0
    if s.mode == "joint" and s.first_fusion:
        x = sde.mean(x_pred, y, ts[start]) + sde.std(ts[start]) * complex_noise(rng, y.shape)
    else:
        x = y + sde.std(T_MAX) * complex_noise(rng, y.shape)
    x = x.astype(np.complex64)
    x_mean = x
    for i in range(start, s.steps):
        t = float(ts[i])
        dt = t - float(ts[i + 1]) if i < s.steps - 1 else float(ts[-1])  # the last step: t_eps to 0
        t_vec = np.full((batch,), t, dtype=np.float32)
        step = 2 * (s.snr * sde.std(t)) ** 2
        for _ in range(s.corrector_steps):  # annealed Langevin
            x_mean = x + np.float32(step) * score_fn(x, y, t_vec)
            x = x_mean + np.float32(np.sqrt(2 * step)) * complex_noise(rng, y.shape)
        g = sde.diffusion(t) * np.sqrt(dt)  # reverse diffusion
        x_mean = x - (sde.drift(x, y) * np.float32(dt) - np.float32(g * g) * score_fn(x, y, t_vec))
        x = x_mean + np.float32(g) * complex_noise(rng, y.shape)
        if on_step is not None:
            on_step()
    return x_mean.astype(np.complex64), x_pred
