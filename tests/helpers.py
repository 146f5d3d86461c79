"""Shared test helpers (imported as `helpers`: tests/ is on pytest's pythonpath).

Fixture paths, tiny configs, tiny corpora.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
# Parity lengths of the tiny exports shared by the session (tests/conftest.py): 4,000 and 16,000 samples
# are multiples of the hop; 16,001 puts the last frame on the reflection point (N % hop == 1, a
# real-spectrum frame); 19,753 is neither.
TINY_PARITY_LENGTHS_S = (0.25, 1.0000625, 1.2345625)


def fixtures_or_skip(*parts: str) -> Path:
    """Path under ../shared/fixtures, or skip the test when a fresh clone has no ../shared."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"fixture {path} absent (../shared/fixtures is only beside the CI checkout)")
    return path


def tiny_params(**overrides) -> dict:
    """presets/demo.yaml shrunk to a model and schedule that train in seconds on CPU."""
    import copy

    from effifusion.core.config import read_params

    params = copy.deepcopy(read_params(ROOT / "presets" / "demo.yaml"))  # base.yaml + demo's changes
    params["model"].update(channels=8, num_tsblocks=1, attn_dropout=0.0)
    params["discriminator"]["channels"] = 8
    params["train"].update(epochs=2, batch_size=2, segment_s=0.5, val_every_steps=3, val_utterances=2)
    params["runtime"].update(checkpoint_every_steps=2, log_every_steps=1, pesq_workers=0, dataloader_workers=0,
                             device="cpu", data_workers=1, evaluate_workers=1)
    params["prune"].update(epochs=1, prune_every_steps=1, ramp_fraction=0.5)
    params["mlflow"]["experiment"] = "test"
    for key, value in overrides.items():
        section, name = key.split("__")
        params[section][name] = value
    return params


def synthetic_speech(seconds: float, seed: int, sr: int = 16000):
    """A voiced, syllabic signal (harmonics of a gliding f0 under a 4 Hz envelope): PESQ accepts it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t + rng.random())
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 3.3 * t + rng.random() * 6), 0, None) ** 0.7
    ramp = np.minimum(1, np.minimum(t, t[-1] - t) / 0.05)
    return (0.25 * x * env * ramp).astype(np.float32)


def make_prepared(root: Path, n_train: int = 8, n_val: int = 2, seconds: float = 1.2, snr_db: float = 5.0) -> Path:
    """A tiny data/prepared (layout of effifusion.data.prepare) of synthetic speech in white noise."""
    import numpy as np

    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        rows = []
        for i in range(n):
            utt = f"p{300 + (i % 2)}_{split}{i:03d}"
            clean = synthetic_speech(seconds + 0.1 * (i % 3), seed=hash((split, i)) % 2**32)
            rng = np.random.default_rng(i)
            noise = rng.standard_normal(len(clean)).astype(np.float32)
            noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
            rows.append(write_pair(root, split, utt, clean, clean + noise, "white", snr_db))
        write_manifest(root / f"{split}.csv", rows)
    return root


def write_pair(root: Path, split: str, utt: str, clean, noisy, noise: str, snr_db: float) -> dict:
    """Write one prepared pair (16 kHz WAVs) and return its manifest row."""
    from effifusion.dsp.audio import write_wav

    write_wav(root / split / "clean" / f"{utt}.wav", clean, 16000)
    write_wav(root / split / "noisy" / f"{utt}.wav", noisy, 16000)
    return {"utt": utt, "speaker": utt.split("_")[0], "clean": f"{split}/clean/{utt}.wav",
            "noisy": f"{split}/noisy/{utt}.wav", "noise": noise, "snr_db": snr_db, "num_samples": len(clean)}


def write_manifest(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def stage_command(stage: str) -> list[str]:
    """dvc.yaml's cmd of ``stage`` as an argv (this interpreter, the script's absolute path): what dvc runs."""
    import shlex
    import sys

    import yaml

    words = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    assert words[0] == "python", words
    return [sys.executable, str(ROOT / words[1]), *words[2:]]


def diffusion_onnx(folder: Path) -> Path:
    """A stand-in diffusion export: score = y − x, x̂ = 0.5·y, with a diffusion model card (d.onnx and
    d.predictive.onnx in ``folder``): the torch-free sampler's path without training a model."""
    import json

    import onnx
    from onnx import TensorProto, helper

    spec = ["batch", 2, 256, "frames"]
    score = helper.make_graph(
        [helper.make_node("Sub", ["y", "x"], ["score"])], "score",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, spec),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, spec),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, spec)])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    predictive = helper.make_graph(
        [helper.make_node("Mul", ["y", "half"], ["estimate"])], "predictive",
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, spec)],
        [helper.make_tensor_value_info("estimate", TensorProto.FLOAT, spec)], initializer=[half])
    sampler = {"mode": "joint", "steps": 4, "snr": 0.5, "corrector_steps": 1, "first_fusion": True, "start_step": 2,
               "final_fusion": True, "fusion_weight": 0.5, "seed": 0}
    card = {"arch": "gp_sgmse", "runtime": "diffusion", "sample_rate": "16000", "min_samples": "510",
            "n_fft": "510", "hop_length": "128", "win_length": "510", "compress_factor": "0.5", "spec_scale": "0.15",
            "time_multiple": "4", "predictive_file": "d.predictive.onnx",
            "sde": json.dumps({"theta": 1.5, "sigma_min": 0.05, "sigma_max": 0.5, "t_eps": 0.03}),
            "sampler": json.dumps(sampler)}
    for graph, name, props in ((score, "d.onnx", card), (predictive, "d.predictive.onnx", {})):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        if props:
            helper.set_model_props(model, props)
        onnx.save(model, str(folder / name))
    return folder / "d.onnx"
