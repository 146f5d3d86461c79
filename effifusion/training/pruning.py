"""Dynamic L1 unstructured pruning of convolution weights during training (docs/reference.md §3).

The reparametrisation of torch.nn.utils.prune (``weight = weight_orig * weight_mask``, recomputed
by a forward pre-hook) is installed once, with an all-ones mask, when the pruner is created. Each
pruning step then recomputes the masks from scratch on the effective weights and writes them into
the ``weight_mask`` buffers in place, with an integer number of zeros: round(target·n) globally or
per layer. That hits the schedule exactly (calling ``l1_unstructured`` repeatedly compounds, and
``global_unstructured`` stacks one stored mask per call in the hook) and masks only grow.

Order of calls, fresh and resumed (the optimizer must see the reparametrised parameter order):

    model = build(...); model.load_state_dict(dense_weights)   # fresh start only
    pruner = DynamicPruner(select_prunable(model, patterns), ..., names=qualified_names(model, params))
    optimizer = AdamW(model.parameters(), ...)                 # after the pruner
    if resuming:
        model.load_state_dict(ckpt["model"])                   # has weight_orig / weight_mask keys
        pruner.load_state_dict(ckpt["pruner"])
        optimizer.load_state_dict(ckpt["optimizer"])
    ...
    pruner.make_permanent()                                    # plain `weight` keys for export
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from effifusion.core.errors import ConfigError
from effifusion.models.base import CONV_TYPES, EnhancementModel

ALL_CONV = "all-conv"  # special pattern: every convolution module, whatever its name
ALL_LINEAR = "all-linear"  # special pattern: every linear map (nn.Linear, attention's q/k/v in-projection)

PrunableParams = list[tuple[nn.Module, str]]


def select_prunable(model: nn.Module, patterns: list[str]) -> PrunableParams:
    """(module, "weight") of every conv module whose qualified name matches a regex (re.search).

    The pattern "all-conv" selects every layer the model declares prunable (``prunable_modules``:
    every Conv1d/Conv2d/ConvTranspose1d/2d by default; all of them for a plain nn.Module). An empty selection is a
    ConfigError naming the patterns and the conv modules that exist.

    The pattern "all-linear" adds every linear map: each nn.Linear's weight (feed-forward layers, attention
    output projections) and each nn.MultiheadAttention's packed q/k/v ``in_proj_weight``. Regexes still
    select among conv modules only. In a transformer most weights are linear: the reading of EffiFusion-GAN
    with 1.75 M dense parameters reaches 1.08 M non-zero only with them (presets/paper-1.75m.yaml).
    """
    regexes = []
    for p in patterns:
        if p in (ALL_CONV, ALL_LINEAR):
            continue
        try:
            regexes.append(re.compile(p))
        except re.error as exc:
            raise ConfigError(f"params.yaml prune.layers: {p!r} is not a valid regex ({exc})") from None
    take_all = ALL_CONV in patterns
    if isinstance(model, EnhancementModel):  # the model contract names its prunable layers
        convs = list(model.prunable_modules())
    else:
        convs = [(name, m) for name, m in model.named_modules() if isinstance(m, CONV_TYPES)]
    selected = [(m, "weight") for name, m in convs if take_all or any(r.search(name) for r in regexes)]
    if ALL_LINEAR in patterns:
        selected += _linear_weights(model)
    if not selected:
        examples = ", ".join(name for name, _ in convs[:8]) or "none"
        raise ConfigError(
            f"params.yaml prune.layers: {patterns} match no convolution module "
            f"(conv modules: {examples}{' ...' if len(convs) > 8 else ''}; '{ALL_CONV}' selects them all, "
            f"'{ALL_LINEAR}' every linear layer)"
        )
    return selected


def _linear_weights(model: nn.Module) -> PrunableParams:
    """(module, parameter name) of every linear map, in module order (an attention's in-projection first)."""
    found: PrunableParams = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            found.append((m, "weight"))
        elif isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            found.append((m, "in_proj_weight"))
    return found


def qualified_names(model: nn.Module, params: PrunableParams) -> list[str]:
    """'<module path>.<param>' for each selected (module, name): labels for per-layer sparsity."""
    path_of = {id(m): name for name, m in model.named_modules()}
    return [f"{path_of.get(id(m), '?')}.{p}" for m, p in params]


def cubic_schedule(
    step: int, total_steps: int, final_amount: float, ramp_fraction: float, initial_amount: float = 0.0
) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)·(1 − t / (ramp_fraction·total))³, then s_f."""
    if total_steps <= 0:
        raise ValueError(f"cubic_schedule: total_steps must be > 0, got {total_steps}")
    ramp_steps = ramp_fraction * total_steps
    if ramp_steps <= 0:
        return float(final_amount)
    t = min(max(step, 0) / ramp_steps, 1.0)
    return float(final_amount + (initial_amount - final_amount) * (1.0 - t) ** 3)


class DynamicPruner:
    """Gradual magnitude pruning of the given parameters on a cubic schedule.

    ``step(s)`` is called at the start of every training step with the global step index, 0 to
    total_steps − 1. It prunes every ``every_steps`` steps during the ramp and once more when the
    ramp ends (at the latest at the last step, so even ramp_fraction = 1 finishes exactly at
    ``final_amount``). ``scope="global"`` ranks all selected weights together
    (one L1 threshold), ``"layer"`` prunes each tensor to the target on its own. The settings arrive
    as params.yaml's schema checks them (core/params.py: amount in [0, 1), ramp_fraction in [0, 1],
    every_steps >= 1, scope global | layer).
    """

    def __init__(
        self,
        params: PrunableParams,
        final_amount: float,
        total_steps: int,
        ramp_fraction: float,
        every_steps: int,
        scope: str = "global",
        *,
        names: list[str] | None = None,
    ) -> None:
        if not params:
            raise ConfigError("pruning: no parameters selected (see params.yaml prune.layers)")
        if int(total_steps) < 1:
            raise ConfigError(f"pruning: total_steps must be >= 1, got {total_steps} (no training steps?)")
        if names is not None and len(names) != len(params):
            raise ValueError(f"DynamicPruner: {len(names)} names for {len(params)} parameters")
        self.params = list(params)
        self.names = list(names) if names is not None else [f"param{i}" for i in range(len(params))]
        self.final_amount = float(final_amount)
        self.total_steps = int(total_steps)
        self.ramp_fraction = float(ramp_fraction)
        self.every_steps = int(every_steps)
        self.scope = scope
        self.ramp_end = min(math.ceil(self.ramp_fraction * self.total_steps), self.total_steps - 1)
        self.target = 0.0  # last scheduled sparsity applied
        self.last_step: int | None = None  # step of the last pruning
        self.permanent = False
        for module, name in self.params:
            if not hasattr(module, name + "_mask"):
                prune.identity(module, name)

    # -- schedule -------------------------------------------------------------------------------

    def scheduled(self, step: int) -> float:
        """Target sparsity at ``step``: the cubic ramp, final_amount from ramp_end on."""
        if step >= self.ramp_end:
            return self.final_amount
        return cubic_schedule(step, self.total_steps, self.final_amount, self.ramp_fraction)

    def step(self, step: int) -> float | None:
        """Prune to the scheduled sparsity when due; return the new overall sparsity, else None."""
        if self.permanent:
            raise RuntimeError("DynamicPruner.step after make_permanent")
        due = step % self.every_steps == 0 or step >= self.ramp_end
        target = self.scheduled(step)
        if not due or target <= self.target:
            return None
        self.prune_to(target)
        self.last_step = step
        return self.sparsity()["overall"]

    def prune_to(self, target: float) -> None:
        """Recompute every mask so exactly round(target·n) weights are zero (globally or per layer).

        Scores are |weight_orig| with already-pruned weights ranked below everything, so masks only
        grow; ties are broken by position (stable sort) so the result is reproducible on any device.
        """
        with torch.no_grad():
            scores = [self._scores(m, n) for m, n in self.params]
            if self.scope == "global":
                flat = torch.cat([s.flatten() for s in scores])
                flat_mask = _mask_k_smallest(flat, round(target * flat.numel()))
                masks = list(torch.split(flat_mask, [s.numel() for s in scores]))
            else:
                masks = [_mask_k_smallest(s.flatten(), round(target * s.numel())) for s in scores]
            for (module, name), mask in zip(self.params, masks):
                buf = getattr(module, name + "_mask")
                buf.copy_(mask.view_as(buf).to(buf.device, buf.dtype))
        self._refresh_weights()
        self.target = float(target)

    # -- measurement ----------------------------------------------------------------------------

    def sparsity(self) -> dict[str, Any]:
        """{"overall": zeros/total, "zeros", "total", "layers": {name: fraction}}, read from the masks."""
        layers: dict[str, float] = {}
        zeros = total = 0
        for (module, name), label in zip(self.params, self.names):
            mask = getattr(module, name + "_mask", None)
            weight = mask if mask is not None else getattr(module, name)  # after make_permanent
            z = int((weight == 0).sum())
            n = weight.numel()
            layers[label] = z / n
            zeros += z
            total += n
        return {"overall": zeros / total, "zeros": zeros, "total": total, "layers": layers}

    # -- finishing and resuming -----------------------------------------------------------------

    def make_permanent(self) -> None:
        """prune.remove on every parameter: plain ``weight`` tensors holding the zeros."""
        for module, name in self.params:
            if hasattr(module, name + "_mask"):
                prune.remove(module, name)
        self.permanent = True

    def state_dict(self) -> dict[str, Any]:
        """Schedule position and settings; the masks themselves live in the model's state_dict."""
        return {
            "final_amount": self.final_amount,
            "total_steps": self.total_steps,
            "ramp_fraction": self.ramp_fraction,
            "every_steps": self.every_steps,
            "scope": self.scope,
            "numels": [getattr(m, n + "_mask").numel() if hasattr(m, n + "_mask") else getattr(m, n).numel()
                       for m, n in self.params],
            "target": self.target,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule position after the model's state_dict (masks) has been loaded.

        A checkpoint made with other pruning settings or another selection of layers is refused:
        continuing it under this schedule would silently give a different sparsity curve.
        """
        for key in ("final_amount", "total_steps", "ramp_fraction", "every_steps", "scope"):
            if state[key] != getattr(self, key):
                raise ConfigError(
                    f"pruning checkpoint has {key}={state[key]!r} but the current settings give "
                    f"{getattr(self, key)!r}: resume with the settings it was started with"
                )
        numels = self.state_dict()["numels"]
        if list(state["numels"]) != numels:
            raise ConfigError(
                f"pruning checkpoint covers {len(state['numels'])} tensors ({sum(state['numels'])} weights), "
                f"the current selection {len(numels)} ({sum(numels)}): params.yaml prune.layers changed?"
            )
        self.target = float(state["target"])
        self.last_step = state["last_step"]
        self._refresh_weights()

    # -- internals ------------------------------------------------------------------------------

    def _scores(self, module: nn.Module, name: str) -> torch.Tensor:
        orig = getattr(module, name + "_orig").detach()
        mask = getattr(module, name + "_mask")
        return torch.where(mask == 0, torch.full_like(orig, -1.0), orig.abs()).float()

    def _refresh_weights(self) -> None:
        # The pre-hook recomputes weight = orig * mask at the next forward; do it now as well so
        # anything reading module.weight before then (counting, export) sees the current mask.
        for module, name in self.params:
            if hasattr(module, name + "_mask"):
                setattr(module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask"))


def _mask_k_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1-D mask with zeros at the k smallest scores (stable order breaks ties by position)."""
    mask = torch.ones_like(scores)
    if k > 0:
        order = torch.argsort(scores, stable=True)
        mask[order[:k]] = 0.0
    return mask


def count_nonzero(model: nn.Module) -> tuple[int, int]:
    """(non-zero, total) over all parameters, counting a pruned weight as weight_orig * weight_mask."""
    nonzero = total = 0
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in seen:  # a parameter shared by two modules counts once
                    continue
                seen.add(id(p))
                t = p
                if pname.endswith("_orig"):
                    mask = module._buffers.get(pname[: -len("_orig")] + "_mask")
                    if mask is not None:
                        t = p * mask
                nonzero += int(torch.count_nonzero(t))
                total += t.numel()
    return nonzero, total
