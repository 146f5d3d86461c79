"""The joint model's final-fusion weights (α, β of α·x_gen + β·x̂), fitted on validation data (numpy).

Why: the joint model combines its generative and predictive outputs "with learned weights", values not
published, and a fixed w = 0.5 cost the demo model about 0.1 validation PESQ. x_gen and x̂ do not
depend on α and β, so the weights need no retraining: the export stage runs the sampler once per
validation utterance (the card's settings, a fixed seed) and solves, for each frequency bin f,

    min over real α_f, β_f of  Σ_utterances Σ_t |α_f·X_gen + β_f·X̂ − X_clean|²

in the sampler's own domain, the compressed complex STFT (where the fusion is applied), in closed
form from 2×2 normal equations. Per bin rather than one scalar pair: on the demo model, per-bin
weights fitted on half of the validation utterances scored higher PESQ on the other half than the
scalar pair (docs/diffusion_fusion.md); the two decoders' errors differ by frequency. A degenerate
bin (no energy, x_gen = x̂) falls back to the scalar pair. Only validation utterances are passed
here (data/prepared/val.csv via ``ValidationLoader``); the test set never is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from effifusion.diffusion import spectrum
from effifusion.diffusion.enhance import analyse
from effifusion.diffusion.sampler import SamplerSettings, fuse, sample_parts

FUSION_KEYS = ("fusion_alpha", "fusion_beta", "fusion_weight")  # overrides that fix the weights by hand


@dataclass
class FusionParts:
    """One utterance's two outputs and its target, compressed complex [F, T], plus what undoes them."""

    utt: str
    gen: np.ndarray
    pred: np.ndarray
    target: np.ndarray
    clean: np.ndarray   # the waveform as given (PESQ reference)
    noisy: np.ndarray
    gain: float         # the peak normalisation the model applies (1 / max |noisy|)
    length: int         # samples after padding to the model's minimum


def fusion_parts(model: Any, utt: str, clean: Any, noisy: Any, settings: SamplerSettings) -> FusionParts:
    """Run ``model``'s sampler on ``noisy`` as ``enhance`` does (peak gain, padding, compressed STFT)
    and return x_gen, x̂ and the clean target in the same domain, cropped to the real frames."""
    clean = np.asarray(clean, dtype=np.float32).reshape(-1)
    noisy = np.asarray(noisy, dtype=np.float32).reshape(-1)
    if clean.shape != noisy.shape or noisy.size == 0:
        raise ValueError(f"{utt}: clean and noisy must be non-empty and equally long, got {clean.size} and "
                         f"{noisy.size} samples")
    gain = 1.0 / max(float(np.max(np.abs(noisy))), 1e-8)
    n = noisy.size
    length = max(n, int(model.min_samples))
    x, c = (np.pad(v * np.float32(gain), (0, length - n))[None] for v in (noisy, clean))
    f = model.frontend
    shape = dict(n_fft=f.n_fft, hop=f.hop_length, alpha=f.compress_factor, beta=model.spec_scale)
    y, frames = analyse(x, **shape, time_multiple=model.time_multiple)
    target, _ = analyse(c, **shape, time_multiple=1)
    score_fn, predict_fn = model.numpy_networks()
    gen, pred = sample_parts(score_fn, predict_fn, y, model.sde, settings)
    return FusionParts(utt, gen[0, :, :frames], pred[0, :, :frames], target[0], clean, noisy, gain, length)


def normal_equations(parts: Iterable[FusionParts]) -> tuple[np.ndarray, np.ndarray]:
    """Per bin, the Gram matrix [F, 2, 2] of (gen, pred) and their products with the target [F, 2]
    (real parts of the complex inner products over frames and utterances)."""
    gram, rhs = None, None
    for p in parts:
        basis = [p.gen.astype(np.complex128), p.pred.astype(np.complex128)]
        if gram is None:
            gram, rhs = np.zeros((p.gen.shape[0], 2, 2)), np.zeros((p.gen.shape[0], 2))
        for i, u in enumerate(basis):
            rhs[:, i] += np.real(np.sum(np.conj(u) * p.target, axis=-1))
            for j, v in enumerate(basis):
                gram[:, i, j] += np.real(np.sum(np.conj(u) * v, axis=-1))
    if gram is None:
        raise ValueError("no validation utterances to fit the final fusion on")
    if not np.isfinite(gram).all() or not np.isfinite(rhs).all():
        raise ValueError("the fusion fit's outputs are not finite (a diverged sampler?)")
    return gram, rhs


def least_squares(parts: Iterable[FusionParts], per_bin: bool = False) -> tuple[Any, Any]:
    """Real (α, β) minimising Σ |α·gen + β·pred − target|²: numbers, or arrays [F] with ``per_bin``.

    Per bin, a ridge of 1e-6 × the bin's energy toward the scalar pair only decides degenerate bins."""
    gram, rhs = normal_equations(parts)
    scalar, *_ = np.linalg.lstsq(gram.sum(0), rhs.sum(0), rcond=None)  # minimum norm if x_gen = x̂
    if not per_bin:
        return float(scalar[0]), float(scalar[1])
    trace = np.trace(gram, axis1=1, axis2=2)
    lam = 1e-6 * trace + 1e-12 * max(float(trace.mean()), 1e-30)
    ridge = gram + lam[:, None, None] * np.eye(2)
    w = np.linalg.solve(ridge, (rhs + lam[:, None] * scalar)[..., None])[..., 0]
    return w[:, 0], w[:, 1]


def relative_error(parts: list[FusionParts], alpha: Any, beta: Any) -> float:
    """Σ |α·gen + β·pred − target|² / Σ |target|²: the fit's objective, comparable across weights."""
    err = sum(float(np.sum(np.abs(fuse(p.gen, p.pred, alpha, beta) - p.target) ** 2)) for p in parts)
    ref = sum(float(np.sum(np.abs(p.target) ** 2)) for p in parts)
    return err / ref if ref > 0 else math.nan


def fused_waveform(model: Any, p: FusionParts, alpha: Any, beta: Any) -> np.ndarray:
    """The waveform ``enhance`` returns for this utterance with these weights (level restored)."""
    f = model.frontend
    spec = spectrum.expand(fuse(p.gen[None], p.pred[None], alpha, beta), f.compress_factor, model.spec_scale)
    return spectrum.istft(spec, f.n_fft, f.hop_length, p.length)[0, :p.noisy.size] / np.float32(p.gain)


def validation_pesq(model: Any, parts: list[FusionParts], weights: dict[str, tuple[Any, Any]],
                    sample_rate: int = 16_000) -> dict[str, float]:
    """Mean wide-band PESQ per named (α, β) pair, and of the noisy input (finite scores only)."""
    from effifusion.metrics.pesq import pesq_or_nan

    def mean(scores: list[float]) -> float:
        finite = [s for s in scores if math.isfinite(s)]
        return round(sum(finite) / len(finite), 4) if finite else math.nan

    out = {name: mean([pesq_or_nan(p.clean, fused_waveform(model, p, a, b), sample_rate) for p in parts])
           for name, (a, b) in weights.items()}
    out["noisy"] = mean([pesq_or_nan(p.clean, p.noisy, sample_rate) for p in parts])
    return out


def fit_final_fusion(model: Any, val_items: Iterable[tuple[str, Any, Any]], sampler_settings: SamplerSettings,
                     seed: int | None = None) -> dict[str, Any]:
    """Fit per-bin (α, β) on validation items (utt, clean, noisy) with the sampler at ``sampler_settings``
    and ``seed`` (default: the settings' seed); the weights, their objective and validation PESQ beside
    the scalar fit, the settings' own weights, the predictive estimate alone and the generative output."""
    s = sampler_settings
    if model.runtime != "diffusion" or not model.has_predictive or s.mode != "joint":
        raise ValueError(f"the final fusion needs a joint-mode sampler of a model with a predictive decoder "
                         f"(arch gp_sgmse, mode joint); got {getattr(model, 'arch', '?')}, mode {s.mode}")
    seed = s.seed if seed is None else int(seed)
    settings = replace(s, seed=seed)
    parts = [fusion_parts(model, utt, clean, noisy, settings) for utt, clean, noisy in val_items]
    alpha, beta = (np.round(w, 6) for w in least_squares(parts, per_bin=True))
    scalar = tuple(round(w, 6) for w in least_squares(parts))
    weights = {"fitted": (alpha, beta), "scalar": scalar, "before": (s.fusion_alpha, s.fusion_beta),
               "predictive": (0.0, 1.0), "generative": (1.0, 0.0)}
    before = s.config()
    return {"fusion_alpha": alpha.tolist(), "fusion_beta": beta.tolist(), "source": "fitted on validation",
            "domain": "compressed complex STFT, least squares per frequency bin",
            "fusion_alpha_mean": round(float(alpha.mean()), 6),
            "fusion_beta_mean": round(float(beta.mean()), 6),
            "scalar": {"fusion_alpha": scalar[0], "fusion_beta": scalar[1]},
            "before": {k: before[k] for k in ("fusion_alpha", "fusion_beta")},
            "utterances": [p.utt for p in parts], "seed": seed,
            "relative_error": {k: round(relative_error(parts, a, b), 6) for k, (a, b) in weights.items()},
            "val_pesq": validation_pesq(model, parts, weights, int(model.sample_rate))}


class ValidationLoader:
    """A loader of the items training validates on (``prepared_dir``/val.csv, ``count`` spread over
    speakers, ``seed``: train.val_utterances and seed): what the exporter fits on, never test.csv.
    ``key()`` fingerprints them, so an export reused by its key is refitted when they change."""

    def __init__(self, prepared_dir: Path, count: int, seed: int):
        self.manifest, self.count, self.seed = Path(prepared_dir) / "val.csv", int(count), int(seed)

    def __call__(self) -> list:
        from effifusion.data.datasets import validation_items  # torch: only when a fit runs

        return validation_items(self.manifest, self.count, self.seed)

    def key(self) -> dict[str, Any]:
        """count, seed and the md5 of val.csv and of every audio file it lists (not read: "missing")."""
        import csv
        import hashlib

        digest = hashlib.md5()
        try:
            digest.update(self.manifest.read_bytes())
            with self.manifest.open(newline="") as f:
                files = [row.get(k) or "" for row in csv.DictReader(f) for k in ("clean", "noisy")]
            for name in files:
                digest.update((self.manifest.parent / name).read_bytes())
        except OSError:
            return {"count": self.count, "seed": self.seed, "md5": "missing"}
        return {"count": self.count, "seed": self.seed, "md5": digest.hexdigest()}


def final_fusion_for_export(model: Any, overrides: dict[str, Any], val_items: Callable[[], list] | None
                            ) -> dict[str, Any] | None:
    """The export step: fit (α, β) for a joint-mode gp_sgmse model and set them on its sampler, unless
    ``export.sampler`` sets a fusion weight by hand (then it wins, unfitted). None when no final fusion
    runs (other archs, other modes, final_fusion off). ``val_items`` loads the validation items."""
    if model.runtime != "diffusion" or not model.has_predictive:
        return None
    s = model.sampler
    if s.mode != "joint" or not s.final_fusion:
        return None
    given = [k for k in FUSION_KEYS if k in (overrides or {})]
    weights = {k: s.config()[k] for k in ("fusion_alpha", "fusion_beta")}
    if given:
        return {**weights, "source": f"export.sampler ({', '.join(given)}): not fitted"}
    if val_items is None:
        return {**weights, "source": "checkpoint: no validation data given to the exporter, not fitted"}
    report = fit_final_fusion(model, val_items(), s)
    model.with_sampler(fusion_alpha=report["fusion_alpha"], fusion_beta=report["fusion_beta"])
    return report
