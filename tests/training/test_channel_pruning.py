"""Channel pruning (prune.method channel): whole channels go, the network that is left is the dense one
without them, reloads from its checkpoint, exports with fewer MACs and resumes (tiny configs, CPU). With
"all-linear" the attention's inner q/k and v widths go too (by hand: models/attention.py)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from effifusion.core.errors import ConfigError
from effifusion.core.settings import AudioConfig, ExportConfig, PruneConfig, parse_params
from effifusion.inference.export import export_onnx, onnx_session, parity_signal
from effifusion.models.attention import head_dims, narrow_inner_widths, scan_attention, self_attention
from effifusion.models.cost import frames_for
from effifusion.models.effifusion_gan.generator import DenseBlock
from effifusion.models.registry import build_model, load_checkpoint, save_checkpoint
from effifusion.training.channel_pruning import ChannelPruningCallback, prune_channels
from effifusion.training.pruning import select_prunable
from effifusion.training.stages import prune_finetune
from helpers import tiny_params

AMOUNT = 0.5
WITH_ATTENTION = ["all-conv", "all-linear"]  # selects the attention's in-projection: its inner widths go
def _prune(**changes) -> PruneConfig:
    """prune.method channel with ``changes``, as the prune stage passes it to the callback."""
    return replace(parse_params(tiny_params(prune__method="channel")).prune, scope="global", **changes)


EXPORT_CFG = ExportConfig(opset=18, parity_lengths_s=(0.25, 1.0000625), parity_tolerance=1e-4)


def tiny_model(seed: int = 0, heads: int = 1):
    """C = 8, one TS-Conformer block, four dense layers per block, ``heads`` attention heads; eval mode."""
    torch.manual_seed(seed)
    cfg = {**tiny_params()["model"], "num_heads": heads}
    return build_model(cfg, 16000).eval()


def selected_weights(model, layers: tuple[str, ...] | list[str] = ("all-conv",)) -> int:
    return sum(getattr(m, p).numel() for m, p in select_prunable(model, list(layers)))


def inputs(model, frames: int = 37, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    mag = torch.rand(1, model.n_bins, frames, generator=gen)
    return mag, (torch.rand(1, model.n_bins, frames, generator=gen) - 0.5) * 6


def concatenating(model, *x):
    """Forward with the dense blocks in their training (concatenating) form, everything else in eval."""
    model.eval()
    for b in model.modules():
        if isinstance(b, DenseBlock):
            b.train()
    try:
        with torch.no_grad():
            return model(*x)
    finally:
        model.eval()


@pytest.mark.parametrize("layers", [["all-conv"], WITH_ATTENTION])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("amount", [0.3, 0.5])
def test_removes_the_amount_of_prunable_weights(amount: float, scope: str, layers: list[str]) -> None:
    model = tiny_model()
    selected, params = selected_weights(model, layers), sum(p.numel() for p in model.parameters())
    frames = frames_for(1.0, 16000, 100)  # the report counts 1 s of audio
    macs = model.macs(frames)["total"]
    report = prune_channels(model, layers, amount, scope)
    removed = 1 - selected_weights(model, layers) / selected  # the attention's in_proj_weight counts
    assert removed == pytest.approx(amount, abs=0.02)  # one channel of the tiny model is ~1 % of them
    assert report["prunable_removed_fraction"] == pytest.approx(removed)
    left = sum(p.numel() for p in model.parameters())
    assert report["params_removed_fraction"] == pytest.approx(1 - left / params)
    assert 0.1 < report["macs_removed_fraction"] == pytest.approx(1 - model.macs(frames)["total"] / macs)
    assert all(0 < g["removed"] < g["channels"] for g in report["groups"].values())
    assert "encoder.downsample_conv" in report["kept"] and "phase_decoder.real_conv" in report["kept"]
    attention = {r for r in report["groups"] if r.endswith(("attn[qk]", "attn[v]"))}
    assert len(attention) == (4 if "all-linear" in layers else 0)  # q/k and v of the time and freq attention


def _cut_dense(dense, plan: dict[str, list[int]]) -> list:
    """Pre-hooks on the dense model zeroing, at every layer that reads them, the channels the plan removed
    (the consumers and offsets written out from the architecture, independently of torch-pruning)."""
    c, depth = dense.encoder.input_conv.out_channels, len(dense.encoder.dense_block.layers)
    last = {"encoder": ["encoder.downsample_conv"], "mag_decoder": ["mag_decoder.upsample_conv"],
            "phase_decoder": ["phase_decoder.upsample_conv"]}
    zero: dict[str, list[int]] = defaultdict(list)
    for root, idxs in plan.items():
        if ".dense_block.layers." in root:  # layer i's output: in layer j's input after layers j-1 .. i+1
            block, rest = root.split(".dense_block.layers.")
            i = int(rest.split(".")[0])
            for j in range(i + 1, depth):
                zero[f"{block}.dense_block.layers.{j}.pointwise_conv"] += [(j - 1 - i) * c + k for k in idxs]
            if i == depth - 1:
                for name in last[block]:
                    zero[name] += idxs
        elif root == "encoder.input_conv":  # the block input: last in every layer's input
            for j in range(depth):
                zero[f"encoder.dense_block.layers.{j}.pointwise_conv"] += [j * c + k for k in idxs]
        elif root == "mag_decoder.upsample_conv":
            zero["mag_decoder.mask_conv"] += idxs
        elif root == "phase_decoder.upsample_conv":
            zero["phase_decoder.real_conv"] += idxs
            zero["phase_decoder.imag_conv"] += idxs
        elif root.endswith("conv_module.pointwise_conv1"):  # GLU channel k: pw2's input column k
            zero[root.replace("pointwise_conv1", "pointwise_conv2")] += idxs
        elif root.endswith("net.1"):  # feed-forward hidden unit k: the second linear's input k
            zero[root.replace("net.1", "net.4")] += idxs
        elif root.endswith(("[qk]", "[v]")):  # inside the attention: _zeroed_attention
            continue
        else:
            raise AssertionError(f"unexpected group root {root}")
    modules = dict(dense.named_modules())

    def hook(idxs):
        def pre(module, args):
            x = args[0].clone()
            if isinstance(module, torch.nn.Linear):  # [N, L, features]
                x[..., idxs] = 0
            else:
                x[:, idxs] = 0
            return (x,)
        return pre

    return [modules[name].register_forward_pre_hook(hook(sorted(set(idxs)))) for name, idxs in zero.items()]


@contextlib.contextmanager
def _zeroed_attention(dense, plan: dict[str, list[int]]):
    """The dense model's attentions with the q/k and v dimensions the plan removed zeroed (their rows of
    in_proj_weight and in_proj_bias, in the packed q | k | v layout): an independent reference, written
    from nn.MultiheadAttention's layout, for what removing them must compute."""
    modules = dict(dense.named_modules())
    saved = []
    for root, idxs in plan.items():
        if not root.endswith(("[qk]", "[v]")):
            continue
        mha = modules[root.rsplit("[", 1)[0]]
        c = mha.embed_dim
        rows = [i for j in idxs for i in (j, c + j)] if root.endswith("[qk]") else [2 * c + j for j in idxs]
        for t in (mha.in_proj_weight, mha.in_proj_bias):
            saved.append((t, t.detach().clone()))
            with torch.no_grad():
                t[rows] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)


@pytest.mark.parametrize("scope,layers,heads", [("global", ["all-conv"], 1), ("layer", ["all-conv"], 1),
                                                ("global", WITH_ATTENTION, 1), ("layer", WITH_ATTENTION, 2)])
def test_pruned_network_is_the_dense_one_without_those_channels(scope: str, layers: list[str],
                                                                 heads: int) -> None:
    """Every coupling is right: the smaller network computes what the dense one computes when nothing
    reads the removed channels (and the eval form, summing slices, agrees with the concatenating one).
    The attention's removed q/k dimensions are zeroed in the dense one: its scores keep their scale."""
    dense = tiny_model(heads=heads)
    pruned = tiny_model(heads=heads)
    report = prune_channels(pruned, layers, AMOUNT, scope)
    plan = report["plan"]
    assert any(root.endswith("ffn1.net.1") for root in plan) == ("all-linear" in layers)
    attention_cut = any(root.endswith("attn[qk]") and idxs for root, idxs in plan.items())
    assert attention_cut == ("all-linear" in layers)
    x = inputs(dense)
    handles = _cut_dense(dense, plan)
    try:
        with _zeroed_attention(dense, plan):
            want = concatenating(dense, *x)
    finally:
        for h in handles:
            h.remove()
    got = concatenating(pruned, *x)
    for a, b in ((got[0], want[0]), (got[2], want[2])):  # magnitude and complex (phase wraps at ±π)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        by_parts = pruned(*x)
    # summation order only: float32 rounding, through the norms and atan2, reaches 2-7e-5 (measured)
    torch.testing.assert_close(by_parts[2], got[2], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(concatenating(dense, *x)[2], want[2], atol=1e-3)  # the cut mattered


@pytest.mark.parametrize("layers,heads", [(["all-conv"], 1), (WITH_ATTENTION, 2)])
def test_checkpoint_rebuilds_the_pruned_widths(tmp_path: Path, layers: list[str], heads: int) -> None:
    model = tiny_model(heads=heads)
    prune_channels(model, layers, AMOUNT, "global")
    save_checkpoint(tmp_path / "g.pt", model, extra={"stage": "prune"})
    loaded, extra = load_checkpoint(tmp_path / "g.pt")
    assert extra["stage"] == "prune" and extra["pruned_widths"] == model.pruned_widths
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    layer = loaded.mag_decoder.dense_block.layers[3].depthwise_conv
    assert layer.groups == layer.in_channels == layer.out_channels < 4 * 8  # the attributes forward reads
    narrowed = []
    for name in ("time_conformer", "freq_conformer"):
        want, got = (getattr(m.tsblocks[0], name).attention.attn for m in (model, loaded))
        assert head_dims(got) == head_dims(want) and got.in_proj_weight.shape == want.in_proj_weight.shape
        assert got.out_proj.in_features == heads * head_dims(got)[1]
        narrowed += [d < 8 // heads for d in head_dims(want)]
    assert any(narrowed) == ("all-linear" in layers)
    x = torch.from_numpy(parity_signal(5000, 16000, seed=1))[None]
    with torch.no_grad():
        assert torch.equal(loaded.enhance(x), model.enhance(x))
    save_checkpoint(tmp_path / "again.pt", loaded)  # a reloaded model saves its widths again
    again, _ = load_checkpoint(tmp_path / "again.pt")
    with torch.no_grad():
        assert torch.equal(again.enhance(x), model.enhance(x))
    blob = torch.load(tmp_path / "g.pt", weights_only=True)
    blob["extra"]["pruned_widths"]["encoder.bogus"] = {"in_channels": 3}
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ConfigError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "bad.pt" in str(err.value) and "encoder.bogus" in str(err.value) and "\n" not in str(err.value)


def _scan_bodies(model) -> list[tuple[list[str], object]]:
    """(inputs, body graph) of each top-level Scan (the blocked attention's loop over query blocks)."""
    return [(list(n.input), next(a.g for a in n.attribute if a.name == "body"))
            for n in model.graph.node if n.op_type == "Scan"]


def graph_macs(path: Path, samples: int = 16000) -> int:
    """MACs of the graph's top-level Conv / ConvTranspose / MatMul / Gemm nodes, of its MultiHeadAttention
    nodes (QKᵀ and AV: per query, keys × (q width + v width)) and of the MatMuls in any Scan bodies (the
    blocked attention of earlier exports), from the shapes ONNX Runtime produces on ``samples`` of input
    (the front end's DFT convs included). A Scan body's MatMuls count per real query, i.e. per key
    (self-attention), not over the zero-padded last block: the work the analytic count describes."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    attention = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    wanted = {name for n in nodes for name in (n.input[0], n.input[1], n.output[0]) if name not in inits}
    wanted |= {name for n in attention for name in n.input[:3]}
    scans = _scan_bodies(model)
    for ins, body in scans:  # the Scan's inputs and the outer tensors its body reads (k, v)
        inner = {i.name for i in body.input} | {o for node in body.node for o in node.output}
        wanted |= {i for node in body.node for i in node.input if i not in inner} | set(ins)
    wanted -= set(inits)
    outputs = {o.name for o in model.graph.output}
    for name in sorted(wanted - outputs):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = parity_signal(samples, 16000, seed=3)[None]
    results = session.run(None, {session.get_inputs()[0].name: x})
    values = dict(zip([o.name for o in session.get_outputs()], results))

    def shape(name: str) -> tuple[int, ...]:
        return tuple(inits[name]) if name in inits else values[name].shape

    total = 0
    for n in nodes:
        x_shape, w_shape, y_shape = shape(n.input[0]), shape(n.input[1]), shape(n.output[0])
        if n.op_type == "Conv":  # each output value: in/groups x kernel products
            total += math.prod(y_shape) * math.prod(w_shape[1:])
        elif n.op_type == "ConvTranspose":  # each input value scatters out/groups x kernel
            total += math.prod(x_shape) * math.prod(w_shape[1:])
        else:
            total += math.prod(y_shape) * x_shape[-1]
    for n in attention:  # q [N, L, heads·d_qk], k [N, L, heads·d_qk], v [N, L, heads·d_v]
        (batch, queries, qk), (_, keys, _), v = shape(n.input[0]), shape(n.input[1]), shape(n.input[2])
        total += batch * queries * keys * (qk + v[-1])
    for ins, body in scans:  # states, then one scan input: the blocks of queries [blocks, N, heads, block, d]
        local = {i.name: shape(x) for i, x in zip(body.input[:-1], ins[:-1])}
        local[body.input[-1].name] = shape(ins[-1])[1:]
        keys = None
        for node in body.node:
            assert node.op_type in ("Identity", "Softmax", "MatMul"), node.op_type
            a = [local[i] if i in local else shape(i) for i in node.input]
            y = (*a[0][:-1], a[1][-1]) if node.op_type == "MatMul" else a[0]
            if node.op_type == "MatMul":
                keys = keys or y[-1]  # the first is q·kᵀ: its last axis runs over the (real) keys
                total += math.prod(y) // y[-2] * a[0][-1] * keys  # per query row, times the real queries
            local[node.output[0]] = y
    return total


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, tiny_export: dict) -> dict:
    """The tiny model exported dense and channel-pruned (50 %; "attention": its inner widths too):
    {"dense"|"pruned"|"attention": (report, card, model, path)}. The dense export is the session's
    tiny_export (tests/conftest.py: tiny_model(), exported at EXPORT_CFG's lengths)."""
    tmp = tmp_path_factory.mktemp("channel_export")
    model = tiny_model()
    dense, _ = load_checkpoint(tiny_export["ckpt"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), dense.state_dict().values()))
    prune_channels(model, ["all-conv"], AMOUNT, "global")
    save_checkpoint(tmp / "pruned.pt", model)
    model = tiny_model()
    prune_channels(model, WITH_ATTENTION, AMOUNT, "global")
    save_checkpoint(tmp / "attention.pt", model)
    out = {"dense": (tiny_export["report"], card_of(tiny_export["onnx"]), dense, tiny_export["onnx"])}
    for name in ("pruned", "attention"):
        report = export_onnx(tmp / f"{name}.pt", tmp / "onnx", EXPORT_CFG, AudioConfig(16000),
                             name=f"{name}.onnx")
        path = Path(report["onnx_file"])
        out[name] = (report, card_of(path), load_checkpoint(tmp / f"{name}.pt")[0], path)
    return out


def card_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_pruned_export_is_smaller_and_counts_fewer_macs(exports: dict) -> None:
    d_report, d_card, d_model, d_path = exports["dense"]
    p_report, p_card, p_model, p_path = exports["pruned"]
    assert p_report["onnx_parity_max_abs"] <= 1e-4 and d_report["onnx_parity_max_abs"] <= 1e-4
    assert p_report["onnx_initializer_values"] < 0.8 * d_report["onnx_initializer_values"]
    frames = frames_for(1.0, 16000, 100)
    analytic = {k: m.macs(frames) for k, m in (("dense", d_model), ("pruned", p_model))}
    for card, k in ((d_card, "dense"), (p_card, "pruned")):  # the card: the count of the exported widths
        assert float(card["gmac_per_second"]) == pytest.approx(analytic[k]["total"] / 1e9, abs=1e-6)
    assert float(p_card["gmac_per_second"]) < 0.85 * float(d_card["gmac_per_second"])
    assert json.loads(p_card["pruned_widths"]) == p_model.pruned_widths and "pruned_widths" not in d_card
    # the graph itself: what the network's convs and matmuls do at 1 s, from ONNX Runtime's shapes. The
    # front end and the attention are the same in both, so the graph saves exactly what the count says.
    g_dense, g_pruned = graph_macs(d_path), graph_macs(p_path)
    assert g_pruned < 0.8 * g_dense
    assert g_dense - g_pruned == analytic["dense"]["total"] - analytic["pruned"]["total"]


def test_attention_pruned_export_runs_narrower_attention_products(exports: dict) -> None:
    """With the attention's inner widths pruned, the graph's QKᵀ / AV (MultiHeadAttention) and projections
    shrink by what the analytic count (and so the card's gmac_per_second) says; parity holds."""
    d_report, _, d_model, d_path = exports["dense"]
    a_report, a_card, a_model, a_path = exports["attention"]
    assert a_report["onnx_parity_max_abs"] <= 1e-4
    frames = frames_for(1.0, 16000, 100)
    dense, pruned = d_model.macs(frames), a_model.macs(frames)
    assert float(a_card["gmac_per_second"]) == pytest.approx(pruned["total"] / 1e9, abs=1e-6)
    assert pruned["attention_matmuls"] < 0.75 * dense["attention_matmuls"]
    attn = json.loads(a_card["pruned_widths"])["tsblocks.0.time_conformer.attention.attn"]
    assert attn == dict(zip(("qk_head_dim", "v_head_dim"), head_dims(a_model.tsblocks[0].time_conformer
                                                                      .attention.attn)))
    g_dense, g_pruned = graph_macs(d_path), graph_macs(a_path)
    assert g_dense - g_pruned == dense["total"] - pruned["total"]
    assert g_pruned < 0.6 * g_dense


@pytest.mark.parametrize("variant", ["pruned", "attention"])
def test_pruned_export_matches_the_pruned_model(exports: dict, variant: str) -> None:
    _, _, model, path = exports[variant]
    x = parity_signal(7777, 16000, seed=11)[None]
    got = onnx_session(path).run(None, {"wav": x})[0]
    with torch.inference_mode():
        want = model.enhance(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4


def _old_self_attention(x: torch.Tensor, mha: torch.nn.MultiheadAttention, scan: bool) -> torch.Tensor:
    """self_attention as it was before inner widths could be pruned (chunk(3), the default scale)."""
    from effifusion.models.attention import blocked_attention

    n, length, channels = x.shape
    q, k, v = torch.nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, length, mha.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    if scan:  # the old blocked form scaled q by dim ** -0.5 itself
        out = blocked_attention(q * q.shape[-1] ** -0.5, k, v, scale=1.0)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return mha.out_proj(out.transpose(1, 2).reshape(n, length, channels))


@pytest.mark.parametrize("heads", [1, 2, 4])  # head widths 16, 8, 4 (1/√8 and 8 ** -0.5 differ in float64)
def test_unpruned_attention_is_bit_identical_to_before(heads: int) -> None:
    torch.manual_seed(heads)
    mha = torch.nn.MultiheadAttention(16, heads, batch_first=True).eval()
    x = torch.randn(3, 45, 16)
    with torch.no_grad():
        assert torch.equal(self_attention(x, mha), _old_self_attention(x, mha, scan=False))
        with scan_attention():
            assert torch.equal(self_attention(x, mha), _old_self_attention(x, mha, scan=True))


def _dims_per_head(heads: int, width: int, count: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return sorted(h * width + int(j) for h in range(heads) for j in torch.randperm(width, generator=gen)[:count])


@pytest.mark.parametrize("heads,drop_qk,drop_v", [(1, 5, 3), (2, 2, 3), (4, 1, 0), (2, 0, 1)])
def test_narrowed_attention_is_the_dense_one_with_those_dims_zeroed(heads: int, drop_qk: int, drop_v: int):
    """Removing q/k dimensions (and v dimensions) computes what the dense attention computes with their
    rows of the packed in-projection zeroed: the softmax keeps the unpruned scale (1/√8 here, not 1/√3)."""
    torch.manual_seed(0)
    dense = torch.nn.MultiheadAttention(16, heads, batch_first=True).eval()
    width = 16 // heads
    qk, v = _dims_per_head(heads, width, drop_qk, 1), _dims_per_head(heads, width, drop_v, 2)
    narrow = torch.nn.MultiheadAttention(16, heads, batch_first=True).eval()
    narrow.load_state_dict(dense.state_dict())
    narrow_inner_widths(narrow, qk, v)
    assert head_dims(narrow) == (width - drop_qk, width - drop_v)
    assert narrow.in_proj_weight.shape == (heads * (3 * width - 2 * drop_qk - drop_v), 16)
    assert narrow.out_proj.weight.shape == (16, heads * (width - drop_v))
    unchanged = copy.deepcopy(dense)
    with torch.no_grad():
        rows = qk + [16 + i for i in qk] + [32 + i for i in v]
        dense.in_proj_weight[rows] = 0
        dense.in_proj_bias[rows] = 0
        x = torch.randn(2, 40, 16)
        want = dense(x, x, x, need_weights=False)[0]  # torch's own module as the reference
        torch.testing.assert_close(self_attention(x, narrow), want, atol=1e-6, rtol=1e-5)
        with scan_attention():
            torch.testing.assert_close(self_attention(x, narrow), want, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(self_attention(x, narrow), self_attention(x, unchanged), atol=1e-4)


def test_attention_dims_must_be_equal_per_head() -> None:
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with pytest.raises(ValueError, match="equal count"):
        narrow_inner_widths(mha, [0, 1], [])  # both from head 0
    with pytest.raises(ValueError, match="equal count"):
        narrow_inner_widths(mha, [], [0, 1, 2, 3])  # all of head 0


def test_two_heads_keep_one_width_and_each_loses_its_own_lowest() -> None:
    model = tiny_model(heads=2)
    attn = model.tsblocks[0].time_conformer.attention.attn
    with torch.no_grad():  # head 0's q/k dims 1 and 2 and head 1's dim 0 (flat 4) are clearly the weakest
        attn.in_proj_weight[[1, 2, 4, 9, 10, 12]] *= 1e-3
    q_rows = attn.in_proj_weight.detach()[:8].clone()
    report = prune_channels(model, WITH_ATTENTION, AMOUNT, "global")
    root = "tsblocks.0.time_conformer.attention.attn[qk]"
    removed = report["plan"][root]
    per_head = [sum(1 for i in removed if i // 4 == h) for h in range(2)]
    assert per_head[0] == per_head[1] == report["groups"][root]["removed"] >= 1
    assert 4 in removed and ({1, 2} & set(removed))
    d_qk, d_v = head_dims(attn)
    assert attn.in_proj_weight.shape[0] == 2 * (2 * d_qk + d_v) and attn.out_proj.in_features == 2 * d_v
    kept = [i for i in range(8) if i not in removed]
    assert torch.equal(attn.in_proj_weight.detach()[: 2 * d_qk], q_rows[kept])  # q rows, head after head


class _Named(torch.nn.Module):
    def __init__(self, arch: str):
        super().__init__()
        self.arch = arch
        self.conv = torch.nn.Conv1d(2, 4, 1)


@pytest.mark.parametrize("arch", ["muse", "imse", "saf", "sgmse", "gp_sgmse"])
def test_other_architectures_are_refused_in_one_line(arch: str) -> None:
    cb = ChannelPruningCallback(_prune(amount=0.3, layers=("all-conv",)))
    with pytest.raises(ConfigError) as err:
        cb.on_model(_Named(arch), total_steps=4)
    text = str(err.value)
    assert "prune.method" in text and repr(arch) in text and "\n" not in text


@pytest.mark.parametrize("layers,amount,scope,setting", [
    (["all-conv"], 0.95, "global", "prune.amount"),    # more than the prunable channels hold
    (["mask_conv", "real_conv"], 0.3, "global", "prune.layers"),  # only fixed widths selected
    (["no_such_layer"], 0.3, "global", "prune.layers"),
])
def test_bad_settings_are_one_line_config_errors(layers, amount, scope, setting) -> None:
    with pytest.raises(ConfigError) as err:
        prune_channels(tiny_model(), layers, amount, scope)
    assert setting in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("layers", [["all-conv"], WITH_ATTENTION])
def test_resume_refuses_other_widths(layers: list[str]) -> None:
    cfg = _prune(amount=0.3, layers=tuple(layers))
    a, b = ChannelPruningCallback(cfg), ChannelPruningCallback(cfg)
    a.on_model(tiny_model(), 4)
    b.on_model(tiny_model(), 4)
    b.load_state_dict(a.state_dict())  # the same dense weights prune the same way
    other = ChannelPruningCallback(replace(cfg, amount=0.5))
    other.on_model(tiny_model(), 4)
    with pytest.raises(ConfigError, match="other layer widths"):
        other.load_state_dict(a.state_dict())


def test_interrupted_channel_prune_run_resumes_to_the_same_weights(tmp_path: Path, tiny_corpus: Path,
                                                                   tiny_dense: dict) -> None:
    """From the session's dense model (tests/conftest.py: tiny_params(train__epochs=1) on make_prepared())."""
    prepared = tiny_corpus
    params = tiny_params(prune__method="channel", prune__amount=0.3)

    def run(out: Path, **kw):
        paths = dict(prepared_dir=prepared, out_dir=out / "models_prune", metrics_path=out / "prune.json",
                     plots_dir=out / "plots_prune", resume_dir=out / "ckpt", track=False, **kw)
        return prune_finetune(params, init_dir=tiny_dense["model_dir"], **paths)

    dense = tiny_dense["root"]
    straight = run(tmp_path / "straight")
    assert run(tmp_path / "resumed", stop_after_steps=2)["interrupted"]
    resumed = run(tmp_path / "resumed")
    assert resumed["steps"] == straight["steps"]
    assert straight["prunable_removed_fraction"] == pytest.approx(0.3, abs=0.02)
    assert 0 < straight["macs_removed_fraction"] < straight["params_removed_fraction"] + 0.2
    g1, _ = load_checkpoint(tmp_path / "straight" / "models_prune" / "model.pt")
    g2, _ = load_checkpoint(tmp_path / "resumed" / "models_prune" / "model.pt")
    dense_g, _ = load_checkpoint(dense / "models_train" / "model.pt")
    assert sum(p.numel() for p in g1.parameters()) < sum(p.numel() for p in dense_g.parameters())
    for (k, a), b in zip(g1.state_dict().items(), g2.state_dict().values()):
        assert torch.equal(a, b), k
    plan = json.loads((tmp_path / "straight" / "models_prune" / "channel_pruning.json").read_text())
    assert plan["prunable_removed_fraction"] == straight["prunable_removed_fraction"]
    rows = (tmp_path / "straight" / "plots_prune" / "sparsity.csv").read_text().splitlines()
    assert rows[0] == "step,sparsity,target" and len(rows) == 2
