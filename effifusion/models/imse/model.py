"""IMSE: MUSE's network with both swaps on by default (``attention: mala``, ``embedding: idconv``).

Everything else — dense codec, decoders, U-Net layout, front end, recipe — is MUSE's [INF: IMSE's
code is not public; this is the reading whose parameter count, 427,619, matches the reported 0.427 M,
docs/models.md, IMSE]. Setting ``attention: met`` and/or ``embedding: deformable`` gives the ablations
(both: MUSE itself, 513,015 parameters).
"""

from __future__ import annotations

from typing import Any

from effifusion.models.muse.model import Muse, muse_config


def imse_config() -> dict[str, Any]:
    """IMSE as read from its abstract and MUSE's code: 427,619 parameters."""
    return {**muse_config(), "arch": "imse", "attention": "mala", "embedding": "idconv"}


class Imse(Muse):
    arch = "imse"
