"""The joint generative/predictive diffusion model (Shi et al., ICASSP 2024): SGMSE+'s NCSN++ encoder shared
by a score decoder and a predictive decoder (models/sgmse/model.py holds both architectures)."""

from effifusion.models.sgmse.model import GpSgmse as MODEL  # noqa: F401  (the registry's entry)
