"""SGMSE+ (sp-uhh/sgmse, MIT): NCSN++ score model of the OUVE SDE; the joint model is models/gp_sgmse."""

from effifusion.models.sgmse.model import Sgmse as MODEL  # noqa: F401  (the registry's entry)
