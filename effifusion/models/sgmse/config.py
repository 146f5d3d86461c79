"""SGMSE+'s and the joint model's ``model`` section as a typed config (sp-uhh/sgmse defaults: docs/models.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from effifusion.core.params import Rule, integer, list_of, number
from effifusion.core.settings import POSITIVE, ModelConfig, Section
from effifusion.diffusion.sampler import settings_with


@dataclass(frozen=True)
class SdeConfig(Section):
    """The OUVE SDE's settings (diffusion/sde.OuveSde)."""

    WHERE: ClassVar[str] = "model.sde"
    theta: float
    sigma_min: float
    sigma_max: float
    t_eps: float


@dataclass(frozen=True)
class SgmseConfig(ModelConfig):
    RULES: ClassVar[dict] = {
        "spec_scale": POSITIVE,
        "nf": Rule(lambda v: integer(4).ok(v) and v % 4 == 0, "a multiple of 4 (GroupNorm groups)"),
        "ch_mult": list_of(integer(1)), "res_blocks": integer(1),
        "attn_resolutions": list_of(integer(1), min_len=0),  # frequency sizes (bins at a level) with self-attention
        "fourier_scale": POSITIVE,
        "sde": {"theta": POSITIVE, "sigma_min": POSITIVE, "sigma_max": POSITIVE,
                "t_eps": number(0, 1, lo_open=True, hi_open=True)},
        "sampler": Rule(lambda v: isinstance(v, dict), "a mapping of sampler settings"),
    }
    spec_scale: float
    nf: int
    ch_mult: tuple[int, ...]
    res_blocks: int
    attn_resolutions: tuple[int, ...]
    fourier_scale: float
    sde: SdeConfig
    sampler: dict[str, Any]  # checked by diffusion/sampler.settings_with (it may change after training)

    def check(self) -> None:
        bins, down = self.n_fft // 2 + 1, 2 ** (len(self.ch_mult) - 1)
        if bins % down:
            self.invalid("n_fft", f"n_fft // 2 + 1 = {bins} frequency bins must divide by 2^(levels - 1) = {down}")
        if self.sde.sigma_max <= self.sde.sigma_min:
            self.sde.invalid("sigma_max", "> sigma_min")
        settings_with(self.sampler, None, self.arch == "gp_sgmse", "model.", bins)
