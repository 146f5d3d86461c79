"""MUSE (Interspeech 2024, public code and checkpoint): the base IMSE builds on (models/imse)."""

from effifusion.models.muse.model import Muse as MODEL  # noqa: F401  (the registry's entry)
