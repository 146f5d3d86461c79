"""Every architecture through the whole pipeline once — train, prune, export with parity, evaluate —
at its demo preset shrunk to seconds (the same stage functions `dvc repro` runs; the DVC wiring
itself is tested once, in test_sweep.py)."""

from __future__ import annotations

import shutil

import pytest

from effifusion.core.config import read_params
from effifusion.evaluation.evaluate import evaluate
from effifusion.inference.export import export_variant
from effifusion.inference.fusion_fit import ValidationLoader
from effifusion.models.registry import load_checkpoint
from effifusion.training.stages import prune_finetune, train_dense
from helpers import ROOT, make_prepared, tiny_params

pytestmark = pytest.mark.slow

SHRINK = {"muse": {"blocks": [1, 1, 1]}, "imse": {"blocks": [1, 1, 1]},
          "saf": {"channels": 8, "num_saf_blocks": 1, "num_heads": 1, "tcn_hidden": 16},
          "gp_sgmse": {"nf": 8, "ch_mult": [1, 2, 2], "attn_resolutions": [64],
                       "sampler": {"mode": "joint", "steps": 3, "snr": 0.5, "corrector_steps": 1, "first_fusion": True,
                                   "start_step": 1, "final_fusion": True, "fusion_weight": 0.5, "seed": 0}}}
TRAIN_KEYS = ("objective", "loss_weights", "score_matching", "lr", "betas", "lr_decay", "grad_clip")


@pytest.mark.parametrize("preset", ["muse-demo", "imse-demo", "saf-demo", "gp-sgmse-demo"])
def test_one_pipeline_pass(preset, tmp_path):
    demo = read_params(ROOT / "presets" / f"{preset}.yaml")
    params = tiny_params(train__epochs=1, train__segment_s=0.5)
    params["model"] = {**demo["model"], **SHRINK[demo["model"]["arch"]]}
    params["train"].update({k: demo["train"][k] for k in TRAIN_KEYS})
    params["export"].update(parity_lengths_s=[1.1], parity_tolerance=demo["export"]["parity_tolerance"])
    # (the parity lengths of every export: tests/inference)
    params["evaluate"].update(num_spectrograms=0, rtf_seconds=0.5)
    prepared = make_prepared(tmp_path / "prepared", n_train=4, n_val=2)
    shutil.copy(prepared / "test.csv", prepared / "unseen.csv")  # the unseen set: the same pairs, for speed
    common = dict(prepared_dir=prepared, resume_dir=tmp_path / "ck", track=False)
    dense = train_dense(params, out_dir=tmp_path / "dense", metrics_path=tmp_path / "dense.json",
                        plots_dir=tmp_path / "pd", **common)
    pruned = prune_finetune(params, tmp_path / "dense", out_dir=tmp_path / "pruned",
                            metrics_path=tmp_path / "pruned.json", plots_dir=tmp_path / "pp", **common)
    model, _ = load_checkpoint(tmp_path / "pruned" / "model.pt")
    assert model.arch == demo["model"]["arch"] and dense["steps"] >= 2
    if params["prune"]["method"] == "none":  # the peers' presets: their papers report unpruned models
        assert pruned["steps"] == 0 and pruned["conv_sparsity"] == 0.0
        assert (tmp_path / "pruned" / "model.pt").read_bytes() == (tmp_path / "dense" / "model.pt").read_bytes()
    else:
        assert pruned["conv_sparsity"] == pytest.approx(params["prune"]["amount"], abs=0.02)
    val_items = ValidationLoader(prepared, params["train"]["val_utterances"], params["seed"])  # as stages/export.py
    report, how = export_variant("pruned", tmp_path / "pruned" / "model.pt", tmp_path / "onnx", params["export"],
                                 params["audio"], val_items)
    assert how == "exported" and report["onnx_parity_max_abs"] <= params["export"]["parity_tolerance"]
    metrics = evaluate(params, prepared_dir=prepared, unseen_dir=prepared,
                       torch_model=tmp_path / "pruned" / "model.pt", onnx_model=tmp_path / "onnx" / "pruned.onnx",
                       out_dir=tmp_path / "report", metrics_path=tmp_path / "evaluate.json",
                       enhanced_dir=tmp_path / "enhanced", track=False, bench=False)
    for set_name in ("test", "unseen"):
        assert metrics[set_name]["n"] == 2
        for system in ("pytorch", "onnx"):
            assert 1.0 <= metrics[set_name][system]["pesq"] <= 4.65
    if demo["model"]["arch"] == "gp_sgmse":
        check_diffusion_export(tmp_path / "onnx", report)


def check_diffusion_export(folder, report):
    """The diffusion export: two graphs, each network at parity, the final fusion's weights fitted on the
    validation items and carried by the card (the sampler's parity is with them), the torch-free sampler
    deterministic and open to sampler overrides, a missing predictive graph one line."""
    import json

    import numpy as np
    import onnx

    from effifusion.core.errors import ConfigError
    from effifusion.inference.backends import load_enhancer

    assert max(report["network_parity_max_rel"].values()) < 1e-4
    assert sorted(p.name for p in folder.iterdir()) == ["pruned.export.json", "pruned.onnx", "pruned.predictive.onnx"]
    fusion = report["final_fusion"]
    sampler = json.loads({p.key: p.value for p in onnx.load(str(folder / "pruned.onnx")).metadata_props}["sampler"])
    assert fusion["source"] == "fitted on validation" and "fusion_weight" not in sampler
    assert (sampler["fusion_alpha"], sampler["fusion_beta"]) == (fusion["fusion_alpha"], fusion["fusion_beta"])
    assert report["sampler"] == sampler
    enhancer = load_enhancer(folder / "pruned.onnx")
    assert enhancer.card["sampler"] == sampler  # the runtime reads the fitted weights
    assert enhancer.card["runtime"] == "diffusion" and enhancer.card["sampler"]["steps"] == 3
    x = np.random.default_rng(2).standard_normal(7000).astype(np.float32) * 0.1
    y = enhancer.enhance(x)
    assert y.shape == x.shape and np.array_equal(y, enhancer.enhance(x))
    predictive = load_enhancer(folder / "pruned.onnx", sampler={"mode": "predictive"})
    assert predictive.card["sampler"]["mode"] == "predictive" and not np.allclose(predictive.enhance(x), y)
    with pytest.raises(ConfigError, match="sampler.stepz: unknown setting"):
        load_enhancer(folder / "pruned.onnx", sampler={"stepz": 3})
    (folder / "pruned.predictive.onnx").unlink()
    with pytest.raises(ConfigError, match="pruned.predictive.onnx is missing"):
        load_enhancer(folder / "pruned.onnx")
