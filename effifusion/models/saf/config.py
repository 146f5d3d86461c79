"""SAF's ``model`` section as a typed config (0.58 M parameters [ABS], each width and depth [INF]: docs/models.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from effifusion.core.params import Rule, integer, one_of
from effifusion.core.settings import POSITIVE, ModelConfig

PHASE_INPUTS = ("cos_sin", "raw")
ODD = Rule(lambda v: integer(1).ok(v) and v % 2 == 1, "a positive odd integer")


@dataclass(frozen=True)
class SafConfig(ModelConfig):
    RULES: ClassVar[dict] = {
        "phase_input": one_of(*PHASE_INPUTS), "channels": integer(1), "encoder_depth": integer(0),
        "num_saf_blocks": integer(0), "num_heads": integer(1), "attn_kernel": ODD, "local_bands": ODD,
        "ffn_mult": integer(1), "tcn_layers": Rule(lambda v: integer(1).ok(v) and v <= 16,
                                                   "an integer in [1, 16] (dilation up to 2 ** 15)"),
        "tcn_repeats": integer(0), "tcn_hidden": integer(1), "tcn_kernel": ODD, "decoder_depth": integer(0),
        "beta": POSITIVE,
    }
    phase_input: str
    channels: int
    encoder_depth: int
    num_saf_blocks: int
    num_heads: int
    attn_kernel: int
    local_bands: int
    ffn_mult: int
    tcn_layers: int
    tcn_repeats: int
    tcn_hidden: int
    tcn_kernel: int
    decoder_depth: int
    beta: float

    def check(self) -> None:
        if self.channels % self.num_heads:
            self.invalid("num_heads", f"must divide channels = {self.channels}")
        bins = self.n_fft // 2 + 1
        if self.n_fft < 8 or bins % 2 == 0:
            self.invalid("n_fft", "n_fft // 2 + 1 frequency bins must be odd so the decoders' stride-2 "
                                  "transposed conv restores F")
        if self.local_bands > (bins - 3) // 2 + 1:
            self.invalid("local_bands", "at most the number of encoded frequency bins")
