"""The final fusion's weights: least squares, fitted on validation only, on the model card, overridden."""

import copy

import numpy as np
import pytest
import torch

from effifusion.core.errors import ConfigError
from effifusion.core.settings import AudioConfig, ExportConfig
from effifusion.diffusion.sampler import fuse, settings_with
from effifusion.inference.fusion_fit import (
    FusionParts,
    ValidationLoader,
    final_fusion_for_export,
    fit_final_fusion,
    least_squares,
)
from effifusion.models.registry import build_model, save_checkpoint
from effifusion.models.sgmse.model import gp_sgmse_config
from helpers import make_prepared, synthetic_speech, write_manifest, write_pair


def tiny(**sampler):
    """The tiny joint model of tests/models/sgmse (4 steps from step 2: 5 evaluations)."""
    cfg = gp_sgmse_config()
    s = {**cfg["sampler"], "steps": 4, "start_step": 2, **sampler}
    torch.manual_seed(0)
    model = build_model({**cfg, "nf": 8, "ch_mult": [1, 2, 2], "res_blocks": 1, "attn_resolutions": [64],
                         "sampler": s}, 16000)
    return model.eval()


def parts(gen, pred, target):
    return FusionParts("u", gen, pred, target, np.zeros(1), np.zeros(1), 1.0, 1)


def complex_normal(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def test_least_squares_recovers_known_weights():
    rng = np.random.default_rng(0)
    items = []
    for frames in (30, 45, 7):  # utterances of different lengths, x̂ correlated with x_gen
        gen = complex_normal(rng, (16, frames))
        pred = 0.7 * gen + 0.5 * complex_normal(rng, (16, frames))
        items.append((gen, pred))
    exact = least_squares([parts(g, p, 0.3 * g + 0.8 * p) for g, p in items])
    assert exact == pytest.approx((0.3, 0.8), abs=1e-9)
    noise = [0.05 * complex_normal(rng, g.shape) for g, _ in items]
    noisy = least_squares([parts(g, p, -0.2 * g + 1.1 * p + z) for (g, p), z in zip(items, noise)])
    assert noisy == pytest.approx((-0.2, 1.1), abs=0.03)
    same = least_squares([parts(g, g, 0.6 * g) for g, _ in items])  # x_gen = x̂: the minimum-norm split
    assert same == pytest.approx((0.3, 0.3), abs=1e-9)


def test_per_bin_least_squares_recovers_known_weights_and_falls_back_in_empty_bins():
    rng = np.random.default_rng(1)
    alpha, beta = np.linspace(-0.2, 0.6, 16), np.linspace(1.0, 0.3, 16)
    items = []
    for frames in (30, 45):
        gen = complex_normal(rng, (16, frames))
        pred = 0.7 * gen + 0.5 * complex_normal(rng, (16, frames))
        gen[5] = pred[5] = 0  # a bin without energy: its weights are the scalar pair's
        items.append(parts(gen, pred, alpha[:, None] * gen + beta[:, None] * pred))
    a, b = least_squares(items, per_bin=True)
    scalar = least_squares(items)
    keep = np.arange(16) != 5
    assert np.allclose(a[keep], alpha[keep], atol=1e-5) and np.allclose(b[keep], beta[keep], atol=1e-5)
    assert (a[5], b[5]) == pytest.approx(scalar, abs=1e-9)


def rewrite_split(prepared, split, seed):
    """Replace every pair of ``split`` with new speech and louder noise, under new utterance names."""
    rows = []
    for i in range(2):
        utt = f"p{300 + i}_{split}new{i}"
        clean = synthetic_speech(0.6, seed=seed + i)
        noise = np.random.default_rng(seed + 10 + i).standard_normal(len(clean)).astype(np.float32) * 0.2
        rows.append(write_pair(prepared, split, utt, clean, clean + noise, "white", 0.0))
    write_manifest(prepared / f"{split}.csv", rows)


def test_weights_are_fitted_on_validation_only(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", n_train=2, n_val=2, seconds=0.6)
    base = tiny()
    load = ValidationLoader(prepared, 2, 0)

    def fit():
        report = final_fusion_for_export(copy.deepcopy(base), {}, load)
        assert report["source"] == "fitted on validation"
        assert all("_val" in utt for utt in report["utterances"])
        assert len(report["fusion_alpha"]) == len(report["fusion_beta"]) == base.n_bins
        return report["fusion_alpha"], report["fusion_beta"], report["scalar"]

    first, key = fit(), load.key()
    rewrite_split(prepared, "test", seed=50)  # another test set: the fit and its fingerprint do not move
    assert fit() == first and load.key() == key
    rewrite_split(prepared, "val", seed=70)   # other validation data: both do
    changed = fit()
    assert load.key() != key and load.key()["md5"] != "missing"
    assert changed[0] != first[0] and changed[1] != first[1] and changed[2] != first[2]
    assert np.isfinite(changed[0]).all() and np.isfinite(changed[1]).all()


def test_fit_report_scores_the_candidates_on_validation(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", n_train=2, n_val=2, seconds=0.6)
    model = tiny()
    report = fit_final_fusion(model, ValidationLoader(prepared, 2, 0)(), model.sampler, seed=3)
    assert report["seed"] == 3 and report["before"] == {"fusion_alpha": 0.5, "fusion_beta": 0.5}
    err = report["relative_error"]
    assert err["fitted"] <= err["scalar"] + 1e-6  # per bin: the scalar pair is one of its candidates
    assert err["scalar"] <= min(err["before"], err["predictive"], err["generative"]) + 1e-6  # least squares
    assert set(report["val_pesq"]) == {"fitted", "scalar", "before", "predictive", "generative", "noisy"}
    with pytest.raises(ValueError, match="joint-mode sampler"):
        fit_final_fusion(model, [], settings_with(model.sampler.config(), {"mode": "generative"}, True))


def test_no_fit_without_a_final_fusion_or_when_export_sampler_sets_the_weights():
    model = tiny(final_fusion=False)
    assert final_fusion_for_export(model, {}, lambda: pytest.fail("loaded validation data")) is None
    model = tiny().with_sampler(fusion_alpha=0.3, fusion_beta=0.7)
    report = final_fusion_for_export(model, {"fusion_alpha": 0.3, "fusion_beta": 0.7},
                                     lambda: pytest.fail("loaded validation data"))
    assert report["source"].startswith("export.sampler")
    assert (report["fusion_alpha"], report["fusion_beta"]) == (0.3, 0.7)
    assert (model.sampler.fusion_alpha, model.sampler.fusion_beta) == (0.3, 0.7)


def test_legacy_fusion_weight_loads_and_overrides():
    stored = {**tiny().sampler.config()}
    del stored["fusion_alpha"], stored["fusion_beta"]
    old = settings_with({**stored, "fusion_weight": 0.25}, None, True)  # an earlier card or checkpoint
    assert (old.fusion_alpha, old.fusion_beta) == (0.25, 0.75)
    net_gen, net_pred = np.full((1, 4, 8), 1 + 2j, np.complex64), np.full((1, 4, 8), 3 - 1j, np.complex64)
    fused = fuse(net_gen, net_pred, old.fusion_alpha, old.fusion_beta)
    assert np.array_equal(fused, np.float32(0.25) * net_gen + np.float32(1 - 0.25) * net_pred)  # bit for bit
    new = settings_with(old.config(), {"fusion_weight": 0.1}, True)   # an override written for it
    assert new.fusion_alpha == pytest.approx(0.1) and new.fusion_beta == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="sampler.fusion_weight: set it or fusion_alpha, not both"):
        settings_with(old.config(), {"fusion_weight": 0.1, "fusion_alpha": 0.2}, True)
    with pytest.raises(ConfigError, match="sampler.fusion_beta: 'x' is not a finite number"):
        settings_with(old.config(), {"fusion_beta": "x"}, True)


def test_per_bin_weights_are_checked_against_the_bins_and_survive_a_checkpoint(tmp_path):
    from effifusion.models.registry import load_checkpoint

    model = tiny()
    with pytest.raises(ConfigError, match="sampler.fusion_alpha: 3 per-bin weights, but the model has 256"):
        model.with_sampler(fusion_alpha=[0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="sampler.fusion_beta: not a list of finite numbers"):
        model.with_sampler(fusion_beta=[0.1, float("inf")] * 128)
    alpha = np.linspace(0, 0.5, model.n_bins).tolist()
    model.with_sampler(fusion_alpha=alpha, fusion_beta=1.0)
    save_checkpoint(tmp_path / "m.pt", model)
    again, _ = load_checkpoint(tmp_path / "m.pt")
    assert again.sampler == model.sampler and again.sampler.config()["fusion_alpha"] == alpha
    x = torch.randn(1, 3000) * 0.1
    with torch.inference_mode():
        assert torch.equal(again.enhance(x), model.enhance(x))


@pytest.mark.parametrize("overrides", [{}, {"fusion_alpha": 0.3, "fusion_beta": 0.7}, {"fusion_weight": 0.2}])
def test_the_exporter_fits_unless_export_sampler_sets_the_weights(tmp_path, monkeypatch, overrides):
    from effifusion.inference import diffusion_export
    from effifusion.inference.export import export_onnx

    prepared = make_prepared(tmp_path / "prepared", n_train=2, n_val=2, seconds=0.6)
    save_checkpoint(tmp_path / "m.pt", tiny())
    seen = {}
    monkeypatch.setattr(diffusion_export, "export_diffusion",  # what would be written: the model's settings
                        lambda model, *args: seen.update(sampler=model.sampler, fusion=args[-1]) or {})
    cfg = ExportConfig(opset=18, parity_lengths_s=(0.5,), parity_tolerance=1e-3, sampler=overrides)
    export_onnx(tmp_path / "m.pt", tmp_path / "onnx", cfg, AudioConfig(16000), name="m.onnx",
                val_items=ValidationLoader(prepared, 2, 0))
    on_card = seen["sampler"].config()
    weights = (on_card["fusion_alpha"], on_card["fusion_beta"])
    assert weights == (seen["fusion"]["fusion_alpha"], seen["fusion"]["fusion_beta"])
    if overrides:
        assert weights == pytest.approx((0.3, 0.7) if "fusion_alpha" in overrides else (0.2, 0.8))
        assert seen["fusion"]["source"].startswith("export.sampler")
    else:
        assert seen["fusion"]["source"] == "fitted on validation" and len(set(weights[0])) > 1


# The fitted weights' round trip through a real export (the report, the ONNX card, the sampler's parity with
# them, the runtime reading them): tests/pipeline/test_architectures.py, gp-sgmse-demo, whose export stage
# fits them on its validation items as `dvc repro` does (one diffusion export for both checks).
