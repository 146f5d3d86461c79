"""MUSE's (and IMSE's) ``model`` section as a typed config (MUSE's public config.json: docs/models.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from effifusion.core.params import integer, list_of, one_of
from effifusion.core.settings import POSITIVE, ModelConfig
from effifusion.models.muse.blocks import MET_WINDOWS

ATTENTIONS = ("met", "mala")
EMBEDDINGS = ("deformable", "idconv")
LEVELS = list_of(integer(1), length=3)  # level 1, level 2, latent


@dataclass(frozen=True)
class MuseConfig(ModelConfig):
    RULES: ClassVar[dict] = {
        "segment_samples": integer(0), "channels": integer(8), "dense_depth": integer(1), "heads": LEVELS,
        "blocks": LEVELS, "ffn_expansion": POSITIVE, "beta": POSITIVE, "attention": one_of(*ATTENTIONS),
        "embedding": one_of(*EMBEDDINGS),
    }
    segment_samples: int
    channels: int
    dense_depth: int
    heads: tuple[int, ...]
    blocks: tuple[int, ...]
    ffn_expansion: float
    beta: float
    attention: str
    embedding: str

    def check(self) -> None:
        if (self.n_fft // 2 + 1) % 8:
            self.invalid("n_fft", "n_fft // 2 + 1 frequency bins must be a multiple of 8: "
                                  "the encoder halves them, the U-Net halves twice more")
        if 0 < self.segment_samples < self.n_fft:
            self.invalid("segment_samples", f"0 (whole utterances) or a segment length >= n_fft = {self.n_fft}")
        c = self.channels
        for level, (h, dim) in enumerate(zip(self.heads, (c, 2 * c, 3 * c))):
            if dim % h:
                self.invalid("heads", f"level {level + 1}: {h} heads must divide {dim} channels")
            if self.attention == "met" and h not in MET_WINDOWS:
                self.invalid("heads", "MET attention takes 1, 2, 4 or 8 heads")
        if int(c * self.ffn_expansion) < 1:
            self.invalid("ffn_expansion", f"at least 1 / channels = {1 / c:g}")
