"""IMSE (arXiv 2511.14515): MUSE with MALA attention and Inception depthwise embeddings (models/muse)."""

from effifusion.models.imse.model import Imse as MODEL  # noqa: F401  (the registry's entry)
