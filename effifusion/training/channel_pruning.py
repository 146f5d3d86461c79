"""Structured (channel) pruning: whole filters go, and every layer that reads them shrinks to match.

``prune.method: channel``. Unstructured pruning (training/pruning.py) leaves zeros that no dense
kernel skips; removing output channels instead leaves a smaller dense network, so the export really
has fewer MACs and runs faster. The prune stage removes them once, when the model is set up
(``ChannelPruningCallback.on_model``, before the task creates its optimisers), and then fine-tunes
the smaller network for ``prune.epochs``: one shot, so no optimiser ever holds a tensor of the old
width (``ramp_fraction`` and ``prune_every_steps`` are for the unstructured method only).

Couplings. torch-pruning's DependencyGraph traces the model and, for the output channels of a root
layer, finds every coupled slice: the norm and PReLU after it, the input channels of each layer that
reads it, and through the dense blocks' concatenations, the depthwise channel and the pointwise input
column of every later layer. Roots are the layers ``prune.layers`` selects. For effifusion_gan it
serves the encoder's input conv, every dense-block layer (depthwise-separable or not), both decoders'
upsampling convs and the conformer FFNs' hidden width (when linears are selected); a root is refused,
and its channels stay, where the traced graph is wrong or the width is fixed:

- the residual width C (encoder.downsample_conv's output): every TS-Conformer adds to it, and its
  attention projects it with ``F.linear`` on ``in_proj_weight`` and splits Q/K/V, which torch-pruning
  traces as an element-wise op (it maps C channels onto 3C); the attention's embedding width and its
  output projection's output stay with it;
- the output convs (mask_conv, mask_out_conv, real_conv, imag_conv): one channel each, then the
  learnable sigmoid over the STFT bins;
- the conformer convolution module's inner width: its GLU halves the channels, which torch-pruning
  also takes for element-wise, so this module groups them itself (``_glu_group``: rows k and
  k + inner of pointwise_conv1, depthwise channel k, batch-norm channel k, column k of pointwise_conv2).

The attention's inner widths are grouped by hand too (``_attention_groups``, models/attention.py), when
``prune.layers`` selects its in-projection, i.e. with "all-linear" (regexes select convolutions only):
its weights are then part of the budget, so ``prune.amount`` keeps its meaning; with "all-conv" alone it
stays whole. Two groups per attention: q/k dimension j (row j of W_q and of W_k, whose product is what
the scores sum; importance √(|W_q,j|₁·|W_k,j|₁), zero when either row is) and v dimension j (row j of W_v,
column j of out_proj; importance the mean of the two L1 norms). A unit of either group is one dimension
of every head (each head loses its own lowest), so the heads keep one width; the softmax keeps the
unpruned scale. At long inputs these widths carry most of the cost: QKᵀ and AV grow with length².

Budget. ``prune.amount`` is, as for the unstructured method, the fraction of prunable parameters
removed: the weights of the layers ``prune.layers`` selects (``select_prunable``). Channels are
ranked by torch-pruning's group L1 importance (each channel's |w| summed over the coupled weights,
averaged over the group's layers, divided by the group's mean); ``prune.scope: global`` removes the
lowest channels across all groups until the budget is met, ``layer`` removes the same fraction of
every group's channels, that fraction chosen to meet it. Every group keeps at least one channel.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from effifusion.core.errors import ConfigError
from effifusion.core.files import write_csv, write_json
from effifusion.core.settings import PruneConfig
from effifusion.models import widths as width_record
from effifusion.models.attention import head_dims, narrow_inner_widths
from effifusion.models.cost import frames_for
from effifusion.training.callbacks import Callback
from effifusion.training.pruning import select_prunable

SUPPORTED_ARCHS = ("effifusion_gan",)
P_NORM = 1  # L1 importance, like the unstructured method's ranking
REPORT_FILE = "channel_pruning.json"


# ---------------------------------------------------------------------------------------------
# What the pruner must know of an architecture


@dataclass
class ArchCouplings:
    """How to trace an architecture, and which widths stay (module name -> why)."""

    example: Callable[[nn.Module], tuple[torch.Tensor, ...]]
    forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], Any]
    fixed: dict[str, str]          # output channels never removed
    untouched: dict[str, str]      # may not appear in a traced group at all
    glu: list[tuple[str, str, str, str]] = field(default_factory=list)  # (pw1, depthwise, norm, pw2)
    attention: list[str] = field(default_factory=list)  # nn.MultiheadAttention whose inner widths may go


def effifusion_gan_couplings(model: nn.Module) -> ArchCouplings:
    """effifusion_gan: traced in the dense blocks' concatenating form (eval mode sums slices instead)."""
    from effifusion.models.effifusion_gan.generator import (
        AttentionModule,
        ConvModule,
        DenseBlock,
        FeedForward,
    )

    def example(m: nn.Module) -> tuple[torch.Tensor, ...]:
        frames = max(8, 2 ** len(m.encoder.dense_block.layers))  # every dilation sees real frames
        gen = torch.Generator().manual_seed(0)
        mag = torch.rand(1, m.n_bins, frames, generator=gen)
        pha = (torch.rand(1, m.n_bins, frames, generator=gen) - 0.5) * 2 * math.pi
        return mag, pha

    def forward(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
        blocks = [(b, b.training) for b in m.modules() if isinstance(b, DenseBlock)]
        for b, _ in blocks:  # the module-by-module form (eval mode calls the convs' weights by slices)
            b.train()
        try:
            mag, pha, _ = m(*inputs)
        finally:
            for b, mode in blocks:
                b.train(mode)
        return mag.sum() + pha.sum()

    names = {mod: name for name, mod in model.named_modules()}
    fixed = {"encoder.downsample_conv": "residual width C (every TS-Conformer and its attention)"}
    for name in ("mag_decoder.mask_conv", "mag_decoder.mask_out_conv", "phase_decoder.real_conv",
                 "phase_decoder.imag_conv"):
        fixed[name] = "output width 1 (mask / phase over the STFT bins)"
    untouched: dict[str, str] = {}
    glu, attention = [], []
    for mod in model.modules():
        if isinstance(mod, FeedForward):
            fixed[f"{names[mod]}.net.4"] = "residual width C (the feed-forward module's output)"
        elif isinstance(mod, AttentionModule):
            why = "attention (embedding width follows the residual width; inner q/k/v widths grouped by hand)"
            for sub in mod.modules():
                untouched[names[sub]] = why
            fixed[f"{names[mod.attn]}.out_proj"] = "residual width C (the attention's output projection)"
            attention.append(names[mod.attn])
        elif isinstance(mod, ConvModule):
            base = names[mod]
            parts = ("pointwise_conv1", "depthwise_conv", "batch_norm", "pointwise_conv2")
            glu.append(tuple(f"{base}.{p}" for p in parts))
            for p in parts:
                untouched[f"{base}.{p}"] = "conformer conv module (its GLU channels are grouped by hand)"
            fixed[f"{base}.pointwise_conv2"] = "residual width C (the conformer conv module's output)"
    return ArchCouplings(example, forward, fixed, untouched, glu, attention)


COUPLINGS: dict[str, Callable[[nn.Module], ArchCouplings]] = {"effifusion_gan": effifusion_gan_couplings}


def check_arch(arch: str) -> None:
    """Refuse an architecture whose couplings no one has written down: guessing them corrupts the model."""
    if arch not in COUPLINGS:
        raise ConfigError(
            f"params.yaml prune.method: channel supports model.arch {', '.join(SUPPORTED_ARCHS)}, "
            f"not {arch!r} "
            "(its layer couplings are not described to the pruner); use l1_unstructured or none")


# ---------------------------------------------------------------------------------------------
# Groups of coupled channels


@dataclass
class ChannelGroup:
    """The output channels of one root layer and everything coupled to them."""

    root: str
    scores: torch.Tensor                   # importance per channel (normalised, float64 on CPU)
    members: list[tuple[str, str, int]]    # (module, "out" | "in" | "qk" | "v", channels of it per unit)
    prune: Callable[[list[int]], None]
    # which channels ``count`` units are (default: the lowest scores); an attention unit is one per head
    chosen: Callable[[int], list[int]] | None = None

    @property
    def size(self) -> int:
        return int(self.scores.numel())

    def choose(self, count: int) -> list[int]:
        """The channels (indices in the dense layer) that removing ``count`` units removes."""
        return self.chosen(count) if self.chosen is not None else lowest(self.scores, count)


_PSEUDO_OPS = ("_ConcatOp", "_SplitOp", "_ElementWiseOp", "_ReshapeOp", "_SliceOp", "_UnbindOp", "_ExpandOp")


def _traced_group(tp: Any, dg: Any, model: nn.Module, root: str, couplings: ArchCouplings
                  ) -> tuple[ChannelGroup | None, str]:
    """The traced group of ``root``'s output channels, or (None, why it is refused)."""
    modules = dict(model.named_modules())
    names = {mod: name for name, mod in modules.items()}
    module = modules[root]
    pruner = dg.get_pruner_of_module(module)
    n = pruner.get_out_channels(module) if pruner is not None else None
    if not n:
        return None, "not traced"
    group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
    members: dict[tuple[str, str], int] = {}
    for item in group.items:
        target = item.dep.target.module
        if type(target).__name__ in _PSEUDO_OPS:
            continue
        name = names.get(target)
        if name is None or width_record.width_attrs(target) is None:
            return None, f"coupled to {name or type(target).__name__}, which channel pruning cannot resize"
        side = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
        if name in couplings.untouched:
            return None, f"coupled to {name}: {couplings.untouched[name]}"
        if side == "out" and name in couplings.fixed:
            return None, f"coupled to {name}: {couplings.fixed[name]}"
        if len(item.idxs) != n:
            return None, f"traced coupling of {name} has {len(item.idxs)} channels for {n} (mis-traced)"
        members[(name, side)] = 1
    importance = tp.importance.GroupMagnitudeImportance(p=P_NORM, group_reduction="mean", normalizer="mean")
    scores = importance(group)
    if scores is None:
        return None, "no weights to rank"

    def prune(idxs: list[int]) -> None:
        dg.get_pruning_group(module, pruner.prune_out_channels, sorted(idxs)).prune(record_history=False)

    return ChannelGroup(root, scores.detach().double().cpu(), [(m, s, k) for (m, s), k in members.items()],
                        prune), ""


def _glu_group(tp: Any, model: nn.Module, names: tuple[str, str, str, str]) -> ChannelGroup:
    """Inner channel k of a conformer conv module: pw1 rows k and k + inner (GLU's two halves),
    depthwise and batch-norm channel k, pw2 column k; ranked as torch-pruning ranks a group."""
    modules = dict(model.named_modules())
    pw1, dw, bn, pw2 = (modules[n] for n in names)
    inner = dw.out_channels
    with torch.no_grad():
        rows = pw1.weight.detach().abs().pow(P_NORM).flatten(1).sum(1)
        per_layer = [rows[:inner] + rows[inner:], bn.weight.detach().abs().pow(P_NORM),
                     pw2.weight.detach().abs().pow(P_NORM).transpose(0, 1).flatten(1).sum(1)]
        scores = torch.stack(per_layer).mean(0).double().cpu()
    scores = scores / scores.mean()

    def prune(idxs: list[int]) -> None:
        idxs = sorted(idxs)
        width = dw.out_channels
        tp.prune_conv_out_channels(pw1, idxs + [i + width for i in idxs])
        tp.prune_depthwise_conv_out_channels(dw, idxs)
        tp.prune_batchnorm_out_channels(bn, idxs)
        tp.prune_conv_in_channels(pw2, idxs)

    members = [(names[0], "out", 2), (names[1], "out", 1), (names[2], "out", 1), (names[3], "in", 1)]
    return ChannelGroup(names[0], scores, members, prune)


def _attention_groups(model: nn.Module, name: str) -> tuple[list[ChannelGroup], str]:
    """The q/k and v groups of attention ``name`` (module docstring), or ([], why it stays whole)."""
    mha = dict(model.named_modules())[name]
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        return [], "attention with separate q/k/v projections or extra key/value biases"
    if hasattr(mha, "in_proj_weight_orig") or hasattr(mha.out_proj, "weight_orig"):
        return [], "attention under unstructured pruning masks"
    heads, (d_qk, d_v) = mha.num_heads, head_dims(mha)
    with torch.no_grad():
        rows = mha.in_proj_weight.detach().abs().pow(P_NORM).sum(1).double().cpu()
        q, k, v = rows.split([heads * d_qk, heads * d_qk, heads * d_v])
        cols = mha.out_proj.weight.detach().abs().pow(P_NORM).sum(0).double().cpu()
    per_dim = {"qk": (q * k).sqrt().reshape(heads, d_qk), "v": ((v + cols) / 2).reshape(heads, d_v)}
    groups = []
    for part, scores in per_dim.items():
        order = torch.argsort(scores, dim=1, stable=True)  # each head's dimensions, lowest first
        units = scores.gather(1, order).mean(0)  # unit u: the u-th lowest dimension of every head
        units = units / units.mean() if float(units.mean()) > 0 else torch.ones_like(units)
        width = scores.shape[1]

        def chosen(count: int, order: torch.Tensor = order, width: int = width) -> list[int]:
            return sorted(h * width + int(j) for h in range(heads) for j in order[h, :count])

        def prune(idxs: list[int], part: str = part) -> None:
            narrow_inner_widths(mha, idxs if part == "qk" else [], idxs if part == "v" else [])

        members = [(name, part, heads)] + ([(f"{name}.out_proj", "in", heads)] if part == "v" else [])
        groups.append(ChannelGroup(f"{name}[{part}]", units, members, prune, chosen))
    return groups, ""


def channel_groups(model: nn.Module, prunable: list[tuple[nn.Module, str]], couplings: ArchCouplings
                   ) -> tuple[list[ChannelGroup], dict[str, str]]:
    """(groups rooted at the selected layers, {selected layer: why its output channels stay})."""
    import torch_pruning as tp

    names = {mod: name for name, mod in model.named_modules()}
    selected = [names[m] for m, _ in prunable]
    modules = dict(model.named_modules())
    glu_by_root = {g[0]: g for g in couplings.glu}
    was_training = model.training
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=couplings.example(model), forward_fn=couplings.forward, verbose=False)
    model.train(was_training)
    groups: list[ChannelGroup] = []
    kept: dict[str, str] = {}
    covered: set[str] = set()
    for root in selected:
        m = modules[root]
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels:
            continue  # a depthwise conv follows the layer that feeds it
        if root in covered:
            continue
        if root in couplings.attention:
            found, why = _attention_groups(model, root)
            if not found:
                kept[root] = why
            groups.extend(found)
            continue
        if root in glu_by_root:
            group, why = _glu_group(tp, model, glu_by_root[root]), ""
        elif root in couplings.fixed or root in couplings.untouched:
            group, why = None, couplings.fixed.get(root) or couplings.untouched[root]
        else:
            group, why = _traced_group(tp, dg, model, root, couplings)
        if group is None:
            kept[root] = why
            continue
        covered.update(name for name, side, _ in group.members if side == "out")
        groups.append(group)
    return groups, kept


# ---------------------------------------------------------------------------------------------
# How many channels each group loses


class _Widths:
    """Output / input widths of the layers the groups touch, and the size of the selected weights."""

    def __init__(self, model: nn.Module, prunable: list[tuple[nn.Module, str]], groups: list[ChannelGroup]):
        modules = dict(model.named_modules())
        names = {mod: name for name, mod in modules.items()}
        self.dims: dict[str, list[int]] = {}
        self.kind: dict[str, tuple[str, int]] = {}
        for g in groups:
            for name, _, _ in g.members:
                m = modules[name]
                if isinstance(m, nn.modules.conv._ConvNd):
                    k = math.prod(m.kernel_size)
                    if m.groups == m.in_channels == m.out_channels and m.groups > 1:
                        self.kind[name], self.dims[name] = ("depthwise", k), [m.out_channels, m.in_channels]
                    elif m.groups == 1:
                        self.kind[name], self.dims[name] = ("dense", k), [m.out_channels, m.in_channels]
                    else:
                        raise ConfigError(f"prune.method channel: {name} is a grouped convolution "
                                          f"(groups={m.groups}), which this pruner does not resize")
                elif isinstance(m, nn.Linear):
                    self.kind[name], self.dims[name] = ("dense", 1), [m.out_features, m.in_features]
                elif isinstance(m, nn.MultiheadAttention):  # in_proj_weight: q and k rows, v rows, C
                    d_qk, d_v = head_dims(m)
                    self.kind[name], self.dims[name] = ("mha", 1), [m.num_heads * d_qk, m.num_heads * d_v,
                                                                    m.embed_dim]
        self.selected = {names[m]: getattr(m, p).numel() for m, p in prunable}
        self.total = sum(self.selected.values())
        self.start = {name: self.numel(name) for name in self.selected if name in self.dims}

    def numel(self, name: str) -> int:
        if name not in self.dims:
            return self.selected[name]
        if self.kind[name][0] == "mha":
            qk, v, embed = self.dims[name]
            return (2 * qk + v) * embed
        (out, inp), (kind, k) = self.dims[name], self.kind[name]
        return out * k if kind == "depthwise" else out * inp * k

    def removed(self) -> int:
        return sum(self.start[n] - self.numel(n) for n in self.start)

    def take(self, group: ChannelGroup, channels: int) -> None:
        for name, side, per in group.members:
            if name not in self.dims:
                continue
            dims = self.dims[name]
            if self.kind[name][0] == "mha":
                dims[0 if side == "qk" else 1] -= per * channels
            elif self.kind[name][0] == "depthwise":
                dims[0] -= per * channels
                dims[1] -= per * channels
            else:
                dims[0 if side == "out" else 1] -= per * channels


def plan_counts(model: nn.Module, prunable: list[tuple[nn.Module, str]], groups: list[ChannelGroup],
                amount: float, scope: str) -> list[int]:
    """Channels to remove from each group so round about ``amount`` of the selected weights go."""
    target = amount * _Widths(model, prunable, groups).total

    def removed_with(counts: list[int]) -> int:
        w = _Widths(model, prunable, groups)
        for g, c in zip(groups, counts):
            w.take(g, c)
        return w.removed()

    most = [g.size - 1 for g in groups]
    reachable = removed_with(most)
    total = _Widths(model, prunable, groups).total
    if target > reachable:
        raise ConfigError(
            f"params.yaml prune.amount: {amount} is more than channel pruning can remove from the layers "
            f"prune.layers selects (at most {reachable / total:.3f}: the residual width, the attention's "
            "embedding width and the output convs stay, and each group keeps one channel)")
    if scope == "layer":
        def counts_at(r: float) -> list[int]:
            return [min(round(r * g.size), g.size - 1) for g in groups]

        lo, hi = 0.0, 1.0
        for _ in range(40):  # smallest uniform fraction that meets the budget
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if removed_with(counts_at(mid)) >= target else (mid, hi)
        below, above = counts_at(lo), counts_at(hi)
        return below if target - removed_with(below) < removed_with(above) - target else above
    # global: lowest normalised importance first, over all groups
    order = sorted(((float(s), gi, ci) for gi, g in enumerate(groups) for ci, s in enumerate(g.scores)))
    w = _Widths(model, prunable, groups)
    counts = [0] * len(groups)
    for _, gi, _ in order:
        before = w.removed()
        if before >= target:
            break
        if counts[gi] >= most[gi]:
            continue
        w.take(groups[gi], 1)
        counts[gi] += 1
        if w.removed() >= target and w.removed() - target > target - before:  # one channel too many
            w.take(groups[gi], -1)
            counts[gi] -= 1
            break
    return counts


def lowest(scores: torch.Tensor, k: int) -> list[int]:
    """The k channels of lowest score (ties: the lower index first)."""
    return sorted(int(i) for i in torch.argsort(scores, stable=True)[:k])


# ---------------------------------------------------------------------------------------------
# Pruning a model


def prune_channels(model: nn.Module, layers: list[str], amount: float, scope: str) -> dict[str, Any]:
    """Remove channels from ``model`` in place; return the plan and what it removed.

    ``amount`` in [0, 1) and ``scope`` global | layer, as params.yaml's schema holds them (core/params.py).
    The model is pruned on the CPU (tracing runs its CPU code paths) and moved back. Its new layer
    widths are recorded in ``model.pruned_widths`` for save_checkpoint.
    """
    arch = getattr(model, "arch", type(model).__name__)
    check_arch(arch)
    prunable = select_prunable(model, layers)
    device = next(model.parameters()).device
    model.cpu()
    frames = frames_for(1.0, model.sample_rate, model.frontend.hop_length)
    macs_before = model.macs(frames)["total"]
    params_before = sum(p.numel() for p in model.parameters())
    before = width_record.snapshot(model)
    couplings = COUPLINGS[arch](model)
    groups, kept = channel_groups(model, prunable, couplings)
    if not groups:
        raise ConfigError(f"params.yaml prune.layers: {layers} select no layer whose output channels can be "
                          f"removed ({'; '.join(f'{k}: {v}' for k, v in list(kept.items())[:3])})")
    widths = _Widths(model, prunable, groups)
    counts = plan_counts(model, prunable, groups, amount, scope) if amount > 0 else [0] * len(groups)
    plan = {g.root: g.choose(c) for g, c in zip(groups, counts)}
    for g in groups:
        if plan[g.root]:
            g.prune(plan[g.root])
    for g, c in zip(groups, counts):
        widths.take(g, c)
    was_training = model.training
    with torch.no_grad():  # in eval mode (batch-norm statistics stay): a shape left behind fails here
        couplings.forward(model.eval(), couplings.example(model))
    model.train(was_training).to(device)
    earlier = getattr(model, width_record.WIDTHS_KEY, None) or {}  # a model pruned before
    recorded = {**earlier, **width_record.changed(before, model)}
    setattr(model, width_record.WIDTHS_KEY, recorded or None)
    macs_after = model.macs(frames)["total"]
    params_after = sum(p.numel() for p in model.parameters())
    return {
        "method": "channel", "amount": amount, "scope": scope,
        "importance": f"group L{P_NORM} (torch-pruning; conv GLU and attention groups by hand)",
        "prunable_total": widths.total, "prunable_removed": widths.removed(),
        "prunable_removed_fraction": widths.removed() / widths.total,
        "params_dense": params_before, "params_pruned": params_after,
        "params_removed_fraction": 1.0 - params_after / params_before,
        "gmac_per_second_dense": macs_before / 1e9, "gmac_per_second": macs_after / 1e9,
        "macs_removed_fraction": 1.0 - macs_after / macs_before,
        "groups": {g.root: {"channels": g.size, "removed": c} for g, c in zip(groups, counts)},
        # root layer -> its output channels removed (indices in the dense model); "<attention>[qk]" and
        # "[v]": the q/k and v dimensions, flat over the heads (h·head width + j)
        "plan": plan,
        "kept": kept,
    }


class ChannelPruningCallback(Callback):
    """prune.method channel: prune once in ``on_model`` (training/channel_pruning.py), then fine-tune.

    Every model of the run has the final widths, so every validation may pick the best. A resumed run
    prunes the same dense weights the same way before the resume checkpoint loads (its widths are
    checked against the saved ones). ``on_finish`` writes ``out_dir/channel_pruning.json`` (the plan)
    and ``plots_dir/sparsity.csv`` (one row: the fraction removed at step 0).
    """

    def __init__(self, prune: PruneConfig):
        super().__init__()
        self.cfg = prune
        self.report: dict[str, Any] | None = None
        self.widths: dict[str, Any] | None = None

    def on_model(self, model: nn.Module, total_steps: int) -> None:
        check_arch(getattr(model, "arch", type(model).__name__))
        if self.cfg.amount <= 0:
            return
        self.report = prune_channels(model, list(self.cfg.layers), self.cfg.amount, self.cfg.scope)
        self.widths = getattr(model, width_record.WIDTHS_KEY, None)

    def on_finish(self, model: nn.Module, out_dir: Path, plots_dir: Path) -> dict[str, Any]:
        write_csv(plots_dir / "sparsity.csv", self.history() or [{"step": 0, "sparsity": 0.0, "target": 0.0}])
        if self.report is None:
            return {"method": "channel", "prunable_removed_fraction": 0.0, "params_removed_fraction": 0.0,
                    "macs_removed_fraction": 0.0}
        write_json(out_dir / REPORT_FILE, self.report)
        self.artifacts = [out_dir / REPORT_FILE]
        keys = ("method", "prunable_removed_fraction", "params_removed_fraction", "macs_removed_fraction",
                "params_dense", "gmac_per_second_dense", "gmac_per_second")
        return {k: self.report[k] for k in keys}

    def config(self) -> dict[str, Any]:
        return {"prune": self.cfg.to_dict()}

    def state_dict(self) -> dict[str, Any]:
        return {"widths": self.widths}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("widths") != self.widths:
            raise ConfigError("channel-pruning resume checkpoint has other layer widths than pruning the "
                              "dense model gives now: delete checkpoints/prune.pt and run the stage again")

    def history(self) -> list[dict[str, Any]]:
        if self.report is None:
            return []
        fraction = self.report["prunable_removed_fraction"]
        return [{"step": 0, "sparsity": fraction, "target": self.cfg.amount}]
