"""Wide-band PESQ (ITU-T P.862.2), the one wrapper every part of the project calls.

``pesq_wb`` raises AudioError when PESQ is undefined (evaluation must not hide a bad file);
``pesq_or_nan`` returns NaN instead and never raises (training batches and validation: a failed
item is counted, not fatal). Kept apart from metrics.py so PESQ worker processes import only this.
"""

from __future__ import annotations

import math

import numpy as np

from effifusion.core.errors import AudioError

PESQ_SAMPLE_RATE = 16_000


def pesq_wb(clean: np.ndarray, enhanced: np.ndarray, sr: int = PESQ_SAMPLE_RATE) -> float:
    """Wide-band PESQ of ``enhanced`` against ``clean``; AudioError when undefined."""
    from pesq import BufferTooShortError, NoUtterancesError, pesq

    if sr != PESQ_SAMPLE_RATE:
        raise AudioError(f"wide-band PESQ needs {PESQ_SAMPLE_RATE} Hz audio, got {sr} Hz: resample first "
                         "(effifusion.dsp.audio.resample)")
    try:
        return float(pesq(sr, np.asarray(clean), np.asarray(enhanced), "wb"))
    except NoUtterancesError:
        raise AudioError("PESQ found no speech (no utterances) in the signals") from None
    except BufferTooShortError:
        raise AudioError("signals are too short for PESQ") from None
    except Exception as exc:  # the C library's other errors (out of memory, ...) and pesq's ValueErrors
        raise AudioError(f"PESQ failed: {type(exc).__name__}: {exc}") from None


def pesq_or_nan(clean: np.ndarray, enhanced: np.ndarray, sr: int = PESQ_SAMPLE_RATE) -> float:
    """Wide-band PESQ of float32 copies, NaN when it cannot be computed (never raises).

    NaN too for inputs PESQ would score wrongly instead of failing: not 1-D, of different lengths,
    or holding NaN / infinite samples.
    """
    c, e = np.asarray(clean, dtype=np.float32), np.asarray(enhanced, dtype=np.float32)
    if c.ndim != 1 or c.shape != e.shape or not (np.isfinite(c).all() and np.isfinite(e).all()):
        return math.nan
    try:
        score = pesq_wb(c, e, sr)
    except AudioError:
        return math.nan
    return score if math.isfinite(score) else math.nan
