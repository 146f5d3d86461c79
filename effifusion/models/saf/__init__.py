"""SAF (arXiv 2308.02263): dual spectrum encoders, Spectrum Attention Fusion blocks, TCN, mask + bias decoders."""

from effifusion.models.saf.model import SAF as MODEL  # noqa: F401  (the registry's entry)
