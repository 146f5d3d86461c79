"""Generator and discriminator: shapes, parameter counts, attention axis, config errors, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from effifusion.core.config import read_params
from effifusion.core.errors import ConfigError
from effifusion.dsp.stft import StftFrontEnd
from effifusion.models.cost import conv_modules
from effifusion.models.discriminator import MetricDiscriminator, build_discriminator
from effifusion.models.effifusion_gan.generator import (
    ConformerBlock,
    Generator,
    TSConformerBlock,
    paper_config,
)
from effifusion.models.registry import build_model, load_checkpoint, save_checkpoint
from helpers import ROOT

FRONT = StftFrontEnd(n_fft=400, hop_length=100, win_length=400, compress_factor=0.3)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_cfg(**over) -> dict:
    """params.yaml's model section shrunk to C = 8 and one TS-Conformer block (fast on CPU)."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]
    return {**cfg, "channels": 8, "num_tsblocks": 1, **over}


@pytest.fixture(scope="module")
def tiny() -> Generator:
    torch.manual_seed(0)
    return build_model(tiny_cfg(), 16000).eval()


# --------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.37])
def test_forward_and_enhance_shapes(tiny: Generator, seconds: float) -> None:
    n = int(seconds * 16000)
    wav = torch.randn(2, n) * 0.1
    mag, pha, _ = FRONT.analyse(wav)
    with torch.no_grad():
        out_mag, out_pha, out_com = tiny(mag, pha)
        enhanced = tiny.enhance(wav[1:])
    frames = 1 + n // 100
    assert out_mag.shape == out_pha.shape == (2, 201, frames)
    assert out_com.shape == (2, 201, frames, 2)
    assert enhanced.shape == (1, n)
    assert torch.isfinite(enhanced).all()
    assert (out_pha.abs() <= torch.pi + 1e-6).all()
    # mask in (0, beta = 2): the output magnitude stays within twice the noisy one
    assert (out_mag >= 0).all() and (out_mag <= 2.0 * mag + 1e-6).all()


@pytest.mark.parametrize("n", [1, 150, 399, 401])
def test_enhance_short_input_is_padded(tiny: Generator, n: int) -> None:
    wav = torch.randn(1, n) * 0.1
    with torch.no_grad():
        out = tiny.enhance(wav)
    assert out.shape == (1, n) and torch.isfinite(out).all()


def test_forward_rejects_wrong_frequency_bins(tiny: Generator) -> None:
    with pytest.raises(ValueError, match="201 frequency bins"):
        tiny(torch.rand(1, 257, 10), torch.rand(1, 257, 10))


# --------------------------------------------------------------------------------- parameter counts


def test_paper_config_has_paper_parameter_count() -> None:
    count = n_params(build_model(paper_config(), 16000))
    assert count == 1_086_033
    assert abs(count - 1.08e6) / 1.08e6 < 0.02


def test_ablation_parameter_counts() -> None:
    dense = n_params(build_model({**paper_config(), "depthwise_separable": False}, 16000))
    assert abs(dense - 2.05e6) / 2.05e6 < 0.02
    single_norm = n_params(build_model({**paper_config(), "residual_dual_norm": False}, 16000))
    assert single_norm == 1_086_033 - 8 * 2 * 64  # one LayerNorm less in each of the 8 conformers
    mpsenet = n_params(build_model({**paper_config(), "depthwise_separable": False,
                                        "residual_dual_norm": False}, 16000))
    assert mpsenet == 2_048_849  # MP-SENet (short), REFERENCE §1


def test_paper_cfg_matches_preset() -> None:
    preset = ROOT / "presets" / "paper.yaml"
    if not preset.is_file():
        pytest.skip("presets/paper.yaml absent")
    assert read_params(preset)["model"] == paper_config()


def test_depthwise_separable_layers() -> None:
    model = build_model(tiny_cfg(depthwise_separable=True), 16000)
    layer = model.encoder.dense_block.layers[2]
    assert layer.depthwise_conv.groups == layer.depthwise_conv.in_channels == 24
    assert layer.dilation == 4 and layer.pointwise_conv.kernel_size == (1, 1)
    # the interleaved-frames computation equals a depthwise conv dilated by 4 along time
    conv = layer.depthwise_conv
    for t in (1, 9, 40):
        x = torch.randn(2, 24, t, 13)
        ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=(4, 1), dilation=(4, 1), groups=24)
        torch.testing.assert_close(layer._depthwise(x), ref)
    dense = build_model(tiny_cfg(depthwise_separable=False), 16000)
    assert dense.encoder.dense_block.layers[3].conv.in_channels == 32
    assert dense.encoder.dense_block.layers[3].conv.dilation == (8, 1)


# --------------------------------------------------------------------------------- attention axis


def test_every_attention_is_batch_first() -> None:
    model = build_model(paper_config(), 16000)
    attns = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attns) == 8 and all(a.batch_first for a in attns)


@pytest.mark.parametrize("dual_norm", [True, False])
def test_conformer_attends_along_the_sequence_not_the_batch(dual_norm: bool) -> None:
    torch.manual_seed(0)
    block = ConformerBlock(8, num_heads=2, ffn_mult=2, conv_kernel=5, attn_dropout=0.0, ffn_dropout=0.0,
                           dual_norm=dual_norm).eval()
    x = torch.randn(3, 40, 8)
    with torch.no_grad():
        batched = block(x)
        single = torch.cat([block(x[i : i + 1]) for i in range(3)])
        assert torch.allclose(batched, single, atol=1e-5)  # sequences do not see each other
        y = x.clone()
        y[0, 0] += 3.0 * torch.randn(8)
        diff = (block(y) - batched).abs().amax(-1)
    assert diff[0, 30:].min() > 1e-4  # token 0 reaches tokens far beyond the k = 5 conv: attention
    assert diff[1:].max() == 0


def test_ts_block_mixes_time_and_frequency_per_item() -> None:
    torch.manual_seed(0)
    block = TSConformerBlock(8, num_heads=2, ffn_mult=2, conv_kernel=3, attn_dropout=0.0, ffn_dropout=0.0,
                             dual_norm=True).eval()
    x = torch.randn(2, 8, 30, 20)  # [B, C, T, F']
    with torch.no_grad():
        base = block(x)
        y = x.clone()
        y[0, :, 0, 0] += 3.0 * torch.randn(8)
        diff = (block(y) - base).abs().amax(1)  # [B, T, F']
    assert diff[0, 20:, 15:].min() > 1e-5  # far in both time and frequency
    assert diff[1].max() == 0  # the other utterance is untouched


# --------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({**paper_config(), "chanels": 8}, "model.chanels"),
        ({k: v for k, v in paper_config().items() if k != "beta"}, "model.beta"),
        ({**paper_config(), "num_heads": 5}, "model.num_heads"),
        ({**paper_config(), "conv_kernel": 30}, "model.conv_kernel"),
        ({**paper_config(), "depthwise_separable": "yes"}, "model.depthwise_separable"),
        ({**paper_config(), "attn_dropout": 1.5}, "model.attn_dropout"),
    ],
)
def test_bad_model_config_names_the_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(cfg, 16000)


def test_bad_front_end_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.n_fft"):
        build_model(tiny_cfg(n_fft=402), 16000)
    with pytest.raises(ConfigError, match=r"model\.hop_length"):
        build_model({k: v for k, v in tiny_cfg().items() if k != "hop_length"}, 16000)
    with pytest.raises(ConfigError, match=r"model\.arch: 'mpsenet' is not a known architecture"):
        build_model(tiny_cfg(arch="mpsenet"), 16000)


# --------------------------------------------------------------------------------- checkpoints


def test_conv_modules_are_named_conv() -> None:
    model = build_model(tiny_cfg(), 16000)
    convs = conv_modules(model)
    assert all("conv" in name.rsplit(".", 1)[-1] for name, _ in convs)
    assert {type(m) for _, m in convs} == {nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d}
    # 3 dense blocks x 4 layers x 2 convs + encoder 2 + mag decoder 3 + phase decoder 3 + 2 conformers x 3
    assert len(convs) == 24 + 2 + 3 + 3 + 6


def test_save_load_round_trip(tmp_path: Path, tiny: Generator) -> None:
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, tiny, extra={"step": 7})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    loaded, extra = load_checkpoint(path)
    assert extra == {"step": 7} and loaded.config() == tiny_cfg() and loaded.arch == "effifusion_gan"
    blob = torch.load(path, weights_only=True)
    assert blob["arch"] == "effifusion_gan" and blob["config"] == tiny_cfg() and blob["sample_rate"] == 16000
    assert not loaded.training
    wav = torch.randn(1, 4000) * 0.1
    with torch.no_grad():
        assert torch.equal(tiny.enhance(wav), loaded.enhance(wav))


def test_load_folds_pruning_reparametrisation(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model(tiny_cfg(), 16000).eval()
    targets = [m for _, m in conv_modules(model)]
    prune.global_unstructured([(m, "weight") for m in targets], prune.L1Unstructured, amount=0.4)
    assert any(k.endswith("weight_orig") for k in model.state_dict())
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, model)
    loaded, _ = load_checkpoint(path)
    assert not any(k.endswith(("_orig", "_mask")) for k in loaded.state_dict())
    zeros = sum(int((m.weight == 0).sum()) for _, m in conv_modules(loaded))
    total = sum(m.weight.numel() for _, m in conv_modules(loaded))
    assert zeros / total == pytest.approx(0.4, abs=0.01)
    mag, pha, _ = FRONT.analyse(torch.randn(1, 3000) * 0.1)
    with torch.no_grad():
        for a, b in zip(model(mag, pha), loaded(mag, pha)):
            assert torch.allclose(a, b, atol=1e-6)


def test_load_bad_checkpoints_name_the_file(tmp_path: Path, tiny: Generator) -> None:
    with pytest.raises(ConfigError, match="missing.pt: model checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"corrupt.pt: not a model checkpoint \(not a file torch.save writes"):
        load_checkpoint(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="other.pt: not a model checkpoint"):
        load_checkpoint(other)
    mismatch = tmp_path / "mismatch.pt"
    save_checkpoint(mismatch, tiny)
    blob = torch.load(mismatch, weights_only=True)
    blob["config"]["channels"] = 16
    torch.save(blob, mismatch)
    with pytest.raises(ConfigError, match="mismatch.pt: weights do not match"):
        load_checkpoint(mismatch)


@pytest.mark.parametrize("kind,message", [
    ("random_bytes", "not a file torch.save writes, or cut short"),
    ("text", "not a file torch.save writes, or cut short"),
    ("empty", "not a file torch.save writes, or cut short"),
    ("cut_short", "not a file torch.save writes, or cut short"),
    ("damaged_archive", r"not a readable model checkpoint \(damaged: "),
    ("tensor", "expected keys arch, config, sample_rate, weights"),
    ("whole_module", "holds pickled Python objects such as torch.nn.modules.linear.Linear"),
    ("weights_not_tensors", "weights are not a mapping of tensors"),
    ("bad_sample_rate", "sample_rate 'fast' is not a positive integer"),
])
def test_garbage_checkpoints_are_config_errors(tmp_path: Path, tiny: Generator, kind: str, message: str) -> None:
    """Whatever a .pt holds, load_checkpoint raises a ConfigError naming it, never torch's exception."""
    path = tmp_path / f"{kind}.pt"
    good = tmp_path / "good.pt"
    save_checkpoint(good, tiny)
    blob = torch.load(good, weights_only=True)
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "text":
        path.write_text("epoch 3: loss 0.12\n" * 50)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "cut_short":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "damaged_archive":  # central directory intact, a stored record overwritten
        data = bytearray(good.read_bytes())
        data[200:4000] = bytes(3800)
        path.write_bytes(bytes(data))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "whole_module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "weights_not_tensors":
        torch.save({**blob, "weights": {"w": [1.0, 2.0]}}, path)
    elif kind == "bad_sample_rate":
        torch.save({**blob, "sample_rate": "fast"}, path)
    with pytest.raises(ConfigError, match=f"{kind}.pt: .*{message}"):
        load_checkpoint(path)


def test_a_checkpoint_of_the_unreleased_single_architecture_layout_is_refused_in_one_line(tmp_path: Path,
                                                                                      tiny: Generator) -> None:
    """{model_cfg, audio_cfg, state_dict} predates the registry and was never released: no upgrade path."""
    torch.save({"model_cfg": {}, "audio_cfg": {}, "state_dict": tiny.state_dict()}, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match=r"old.pt: not a model checkpoint \(expected keys arch, config, "):
        load_checkpoint(tmp_path / "old.pt")


# --------------------------------------------------------------------------------- discriminator


def test_discriminator_parameters_and_output_range() -> None:
    torch.manual_seed(0)
    disc = build_discriminator({"channels": 16})
    assert n_params(disc) == 181_650
    clean, other = torch.rand(3, 201, 40), torch.rand(3, 201, 40) * 3
    score = disc(clean, other)
    assert score.shape == (3, 1)
    assert ((score > 0) & (score < 1)).all()
    score.mean().backward()
    assert all(p.grad is not None for p in disc.parameters())


def test_discriminator_width_and_config_errors() -> None:
    assert n_params(MetricDiscriminator(8)) < n_params(MetricDiscriminator(16))
    with pytest.raises(ConfigError, match=r"discriminator\.channel"):
        build_discriminator({"channel": 16})
    with pytest.raises(ConfigError, match=r"discriminator\.channels"):
        build_discriminator({"channels": 0})


def test_dense_blocks_by_parts_equal_the_concatenating_form_also_when_pruned():
    """Inference runs each dense layer part by part (no concatenation: memory); training keeps the
    concatenating form. Both give the same output, pruning masks included."""
    from effifusion.models.cost import conv_modules

    torch.manual_seed(0)
    model = build_model(tiny_cfg(), 16000).eval()
    prune.global_unstructured([(m, "weight") for _, m in conv_modules(model)], prune.L1Unstructured, amount=0.3)
    x = torch.randn(2, 8000) * 0.1
    blocks = [model.encoder.dense_block, model.mag_decoder.dense_block, model.phase_decoder.dense_block]
    with torch.no_grad():
        by_parts = model.enhance(x)
        for block in blocks:
            block.training = True  # the concatenating form (no dropout or batch statistics in these blocks)
        concatenated = model.enhance(x)
    assert torch.allclose(by_parts, concatenated, atol=1e-5)
