"""EffiFusion-GAN's ``model`` section as a typed config (docs/models.md: the paper's sizes, presets/paper.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from effifusion.core.params import BOOL, Rule, integer, number
from effifusion.core.settings import POSITIVE, ModelConfig

ENCODER_ONLY = "encoder"  # depthwise_separable: depthwise-separable dense block in the encoder only
PROBABILITY = number(0, 1, hi_open=True)


@dataclass(frozen=True)
class EffiFusionGanConfig(ModelConfig):
    RULES: ClassVar[dict] = {
        "channels": integer(1), "dense_depth": integer(1), "num_tsblocks": integer(0), "num_heads": integer(1),
        "ffn_mult": integer(1),
        "conv_kernel": Rule(lambda v: integer(1).ok(v) and v % 2 == 1, "a positive odd integer"),
        "attn_dropout": PROBABILITY, "ffn_dropout": PROBABILITY,
        "depthwise_separable": Rule(lambda v: isinstance(v, bool) or v == ENCODER_ONLY,
                                    f"true (every dense block), false (none) or {ENCODER_ONLY} (the encoder's only)"),
        "residual_dual_norm": BOOL, "beta": POSITIVE,
    }
    channels: int
    dense_depth: int
    num_tsblocks: int
    num_heads: int
    ffn_mult: int
    conv_kernel: int
    attn_dropout: float
    ffn_dropout: float
    depthwise_separable: bool | str
    residual_dual_norm: bool
    beta: float

    def check(self) -> None:
        if self.channels % self.num_heads:
            self.invalid("num_heads", f"must divide channels = {self.channels}")
        if self.n_fft < 8 or (self.n_fft // 2 + 1) % 2 == 0:
            self.invalid("n_fft", "n_fft // 2 + 1 frequency bins must be odd so the decoders' stride-2 "
                                  "transposed conv restores F")
