"""Layer widths of a channel-pruned model: what its checkpoint records so the smaller network rebuilds.

Channel pruning (training/channel_pruning.py) shrinks layers in place: a conv keeps its class and
kernel but loses output or input channels, its norm and activation follow. The architecture's
``config()`` still describes the dense network, so the checkpoint also carries, per shrunk module, its
width attributes (``extra["pruned_widths"]``: {qualified name: {attribute: value}}). ``resize`` gives
a freshly built dense model those widths, with parameters and buffers of the matching shapes, before
the weights load; forward code that reads widths reads them from these attributes or from tensor shapes.
An attention keeps its embedding width; its inner per-head q/k and v widths are the attributes
``qk_head_dim`` / ``v_head_dim`` (models/attention.py; ``head_dim`` where never pruned).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from effifusion.core.errors import ConfigError
from effifusion.models.attention import head_dims

WIDTHS_KEY = "pruned_widths"  # checkpoint extra key, and the model attribute that carries the record

# The attributes that hold a layer's widths, per layer type (first match wins).
WIDTH_ATTRS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._NormBase, ("num_features",)),  # BatchNorm*d and InstanceNorm*d
    (nn.PReLU, ("num_parameters",)),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.MultiheadAttention, ("qk_head_dim", "v_head_dim")),  # its out_proj is an nn.Linear of its own
)


def width_attrs(module: nn.Module) -> tuple[str, ...] | None:
    """The width attribute names of ``module``, or None for a layer type without recorded widths."""
    for cls, attrs in WIDTH_ATTRS:
        if isinstance(module, cls):
            return attrs
    return None


def widths_of(module: nn.Module) -> dict[str, Any]:
    """{attribute: value} of a layer's widths (tuples as lists: the checkpoint holds plain values)."""
    if isinstance(module, nn.MultiheadAttention):  # the attributes exist only once pruning set them
        return dict(zip(("qk_head_dim", "v_head_dim"), head_dims(module)))
    attrs = width_attrs(module) or ()
    return {a: list(getattr(module, a)) if isinstance(getattr(module, a), tuple) else int(getattr(module, a))
            for a in attrs}


def snapshot(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Widths of every layer that has them, by qualified name."""
    return {name: widths_of(m) for name, m in model.named_modules() if width_attrs(m) is not None}


def changed(before: dict[str, dict[str, Any]], model: nn.Module) -> dict[str, dict[str, Any]]:
    """The layers whose widths differ from ``before`` (a ``snapshot`` of the dense model)."""
    now = snapshot(model)
    return {name: w for name, w in now.items() if before.get(name) != w}


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of each direct parameter and buffer of a layer at its current width attributes."""
    if isinstance(module, nn.modules.conv._ConvNd):
        k = tuple(module.kernel_size)
        if module.transposed:
            weight = (module.in_channels, module.out_channels // module.groups, *k)
        else:
            weight = (module.out_channels, module.in_channels // module.groups, *k)
        return {"weight": weight, "bias": (module.out_channels,)}
    if isinstance(module, nn.Linear):
        return {"weight": (module.out_features, module.in_features), "bias": (module.out_features,)}
    if isinstance(module, nn.LayerNorm):
        shape = tuple(module.normalized_shape)
        return {"weight": shape, "bias": shape}
    if isinstance(module, nn.MultiheadAttention):
        d_qk, d_v = head_dims(module)
        rows = module.num_heads * (2 * d_qk + d_v)
        return {"in_proj_weight": (rows, module.embed_dim), "in_proj_bias": (rows,)}
    n = module.num_parameters if isinstance(module, nn.PReLU) else module.num_features
    return {name: (n,) for name in ("weight", "bias", "running_mean", "running_var")}


def resize(model: nn.Module, widths: Any, source: str) -> None:
    """Give the layers of a freshly built model the recorded widths (values are filled by load_state_dict).

    ``source`` names the checkpoint in the ConfigError raised for a record that does not fit the model.
    """
    if not isinstance(widths, dict):
        raise ConfigError(f"{source}: {WIDTHS_KEY} is not a mapping of layer names to widths")
    modules = dict(model.named_modules())
    for name, attrs in widths.items():
        module = modules.get(name)
        allowed = width_attrs(module) if module is not None else None
        if allowed is None or not isinstance(attrs, dict) or set(attrs) != set(allowed):
            raise ConfigError(f"{source}: {WIDTHS_KEY} names {name!r}, which is no resizable layer of this "
                              f"architecture (or its widths {attrs!r} are incomplete)")
        for attr, value in attrs.items():
            ok = (all(isinstance(v, int) and v >= 1 for v in value) if isinstance(value, list)
                  else isinstance(value, int) and not isinstance(value, bool) and value >= 1)
            if not ok:
                raise ConfigError(f"{source}: {WIDTHS_KEY}[{name!r}].{attr} = {value!r} "
                                  "is not a positive width")
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for pname, shape in _shapes(module).items():
            current = getattr(module, pname, None)
            if not isinstance(current, torch.Tensor) or tuple(current.shape) == shape:
                continue
            fresh = torch.zeros(shape, dtype=current.dtype, device=current.device)
            if pname in module._parameters:
                module._parameters[pname] = nn.Parameter(fresh, requires_grad=current.requires_grad)
            else:
                module._buffers[pname] = fresh
    setattr(model, WIDTHS_KEY, {name: dict(attrs) for name, attrs in widths.items()})
