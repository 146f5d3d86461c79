"""`effifusion summary`: parameter / sparsity counts and the analytic MAC count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from effifusion.cli import main
from effifusion.models.cost import conv_modules, frames_for
from effifusion.models.effifusion_gan.generator import paper_config
from effifusion.models.registry import build_model, save_checkpoint
from effifusion.models.summary import summarize

TINY = {**paper_config(), "channels": 8, "num_tsblocks": 1}


def write_params(tmp_path: Path, model_cfg: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"audio": {"sample_rate": 16000}, "model": model_cfg}))
    return path


@pytest.mark.parametrize("depthwise_separable", [True, False])
def test_count_macs_matches_torch_flop_counter(depthwise_separable: bool) -> None:
    """The analytic walk equals what torch counts on a real forward pass (MACs = FLOPs / 2)."""
    model = build_model({**TINY, "depthwise_separable": depthwise_separable}, 16000).eval()
    frames = 24  # a multiple of the largest dilation: the dense block then pads no extra frames
    # grad mode on: the eval fast path of nn.MultiheadAttention is a fused op the counter does not see
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 201, frames), torch.rand(1, 201, frames))
    assert model.macs(frames)["total"] == counter.get_total_flops() // 2


def test_macs_scale_with_length_except_attention() -> None:
    model = build_model(TINY, 16000)
    short, long = model.macs(100), model.macs(200)
    parts = ("encoder", "tsblocks", "mag_decoder", "phase_decoder")
    assert short["total"] == sum(short[p] for p in parts)
    assert long["total"] - long["attention_matmuls"] == 2 * (short["total"] - short["attention_matmuls"])
    assert long["attention_matmuls"] > 2 * short["attention_matmuls"]  # time attention is quadratic


def test_paper_and_dense_macs_per_second() -> None:
    frames = frames_for(1.0, 16000, 100)
    assert frames == 161
    paper = build_model(paper_config(), 16000).macs(frames)
    dense = build_model({**paper_config(), "depthwise_separable": False}, 16000).macs(frames)
    assert 39e9 < dense["total"] < 43e9  # MP-SENet: about 41 GMAC/s (REFERENCE §7)
    assert dense["encoder"] / frames == pytest.approx(74e6, rel=0.03)  # the 3x3 dense block at F = 201
    assert paper["total"] < 0.6 * dense["total"]
    assert paper["tsblocks"] == dense["tsblocks"]
    assert paper["tsblocks"] > paper["encoder"] + paper["mag_decoder"] + paper["phase_decoder"]


def test_summarize_params_file(tmp_path: Path) -> None:
    params = write_params(tmp_path, paper_config())
    summary = summarize(str(params))
    json.dumps(summary)  # JSON-able
    assert summary["params_total"] == 1_086_033
    assert summary["params_nonzero"] <= summary["params_total"]
    assert summary["conv_sparsity"] == 0.0
    assert 15 < summary["gmac_per_second"] < 25
    assert summary["gmac_per_second_10s_input"] > summary["gmac_per_second"]
    assert set(summary["macs_1s"]) >= {"encoder", "tsblocks", "mag_decoder", "phase_decoder", "total"}
    assert summary["model_cfg"] == paper_config()
    # 3 dense blocks x 8, encoder 2, decoders 3 + 3, 8 conformers x 3
    assert len(summary["sparsity_per_conv_layer"]) == 24 + 2 + 3 + 3 + 24


def test_summarize_pruned_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(TINY, 16000)
    convs = conv_modules(model)
    prune.l1_unstructured(convs[0][1], "weight", amount=0.5)
    prune.global_unstructured([(m, "weight") for _, m in convs[1:]], prune.L1Unstructured, amount=0.3)
    ckpt = tmp_path / "pruned.pt"
    save_checkpoint(ckpt, model)
    summary = summarize(str(tmp_path / "absent.yaml"), checkpoint=str(ckpt))
    assert summary["source"] == str(ckpt)
    assert summary["sparsity_per_conv_layer"][convs[0][0]] == pytest.approx(0.5, abs=0.02)
    assert summary["conv_sparsity"] == pytest.approx(0.3, abs=0.03)
    assert summary["params_total"] - summary["params_nonzero"] >= summary["conv_weights_total"] * 0.29
    assert summary["params_total"] == sum(p.numel() for p in build_model(TINY, 16000).parameters())


def test_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = write_params(tmp_path, TINY)
    assert main(["summary", "--params", str(params)]) == 0
    assert json.loads(capsys.readouterr().out)["model_cfg"]["channels"] == 8
    assert main(["summary", "--preset", "paper"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert paper["params_total"] == 1_086_033 and paper["arch"] == "effifusion_gan"
    bad = write_params(tmp_path, {**TINY, "heads": 2})
    assert main(["summary", "--params", str(bad)]) == 2
    assert "model.heads: unknown setting" in capsys.readouterr().err
