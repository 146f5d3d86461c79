"""Audio I/O and resampling shared by every stage (the STFT front end is dsp/stft.py).

WAV files are read and written with soundfile; every
read is validated so a bad file fails with its name and the problem, not deep inside a model.
Writes go to a temporary file first and are renamed into place, so nothing is half-written.

libsndfile reads a WAV cut short inside its data (an interrupted copy or download) without a word
and returns the frames present; ``wav_truncation`` compares the header with the file size so
readers can refuse it (``read_wav``) or say so (``effifusion enhance``).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from effifusion.core.errors import AudioError
from effifusion.core.files import atomic_path
from effifusion.dsp.resampler import sinc_resample

SAMPLE_RATE = 16_000
SILENCE_PEAK = 1e-4  # |x| below this everywhere counts as silent (-80 dBFS)

# The one resampler of the project (docs/reference.md §4: resamplers disagree by ~0.006 PESQ, so fix one).
# torchaudio's windowed-sinc with a Kaiser window, the "kaiser_best" settings, computed by
# dsp/resampler.py (the same algorithm in numpy, torchaudio's samples to ~1e-6, no torch needed).
RESAMPLING = {
    "library": "effifusion.dsp.resampler (torchaudio.functional.resample in numpy)",
    "resampling_method": "sinc_interp_kaiser",
    "lowpass_filter_width": 64,
    "rolloff": 0.9475937167399596,
    "beta": 14.769656459379492,
}


WAV_UNKNOWN_SIZES = (0, 0x7FFFFFFF, 0xFFFFFFFF)  # data sizes streaming writers leave for "until the end"


def wav_truncation(path: str | os.PathLike) -> tuple[int, int] | None:
    """(frames the header declares, frames the file holds) when a RIFF WAV is cut short, else None.

    Reads the RIFF chunk headers (plain PCM/float and WAVE_FORMAT_EXTENSIBLE alike: block_align
    sits at the same place in both) up to the ``data`` chunk and compares its size with the bytes
    present. None for complete files, other formats (RF64 and W64 included), unknown sizes and
    headers too damaged to tell.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, block_align = 12, 0
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
                if chunk_id == b"fmt ":
                    fmt = f.read(min(chunk_size, 16))
                    if len(fmt) >= 14:
                        block_align = struct.unpack("<H", fmt[12:14])[0]
                elif chunk_id == b"data":
                    present = size - (pos + 8)
                    if not block_align or chunk_size in WAV_UNKNOWN_SIZES or chunk_size <= present:
                        return None
                    return chunk_size // block_align, present // block_align
                pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even length
    except (OSError, struct.error):
        return None
    return None


def read_wav(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    mono: bool = True,
    allow_silent: bool = False,
) -> tuple[np.ndarray, int]:
    """Read a WAV as float32 in [-1, 1]; shape [n] when mono else [n, channels].

    Raises AudioError naming the file when it is unreadable, cut short (training and scoring must
    not use half a file), empty, not finite, silent, has more than one channel while ``mono`` is
    asked for, or has another rate than ``sample_rate``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    cut = wav_truncation(path)
    if cut:
        raise AudioError(f"{path}: cut short: header says {cut[0]} frames, file holds {cut[1]}")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if sample_rate is not None and sr != sample_rate:
        raise AudioError(f"{path}: sample rate is {sr} Hz, expected {sample_rate} Hz")
    if audio.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if mono:
        if audio.shape[1] != 1:
            raise AudioError(f"{path}: has {audio.shape[1]} channels, expected mono")
        audio = audio[:, 0]
    check_audio(audio, path, allow_silent=allow_silent)
    return audio, sr


def check_audio(audio: np.ndarray, name: str | os.PathLike, *, allow_silent: bool = False) -> None:
    """Raise AudioError if ``audio`` holds NaN/inf or (unless allowed) is silent."""
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{name}: contains NaN or infinite samples")
    if not allow_silent and float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise AudioError(f"{name}: is silent (peak below {SILENCE_PEAK:g})")


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write a WAV atomically (temp file in the same folder, then rename)."""
    audio = np.asarray(audio, dtype=np.float32)
    if subtype.startswith("PCM"):
        audio = np.clip(audio, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype=subtype, format="WAV")


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample along the first axis ([n] or [n, channels]) with the project's fixed resampler (see
    RESAMPLING); float32, ceil(n·new_sr/orig_sr) samples."""
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == new_sr:
        return audio
    y = sinc_resample(audio.T, orig_sr, new_sr, lowpass_filter_width=RESAMPLING["lowpass_filter_width"],
                      rolloff=RESAMPLING["rolloff"], method=RESAMPLING["resampling_method"],
                      beta=RESAMPLING["beta"])
    return np.ascontiguousarray(y.T)
