"""dsp/audio.py: the truncated-WAV check and read_wav refusing a file cut short."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from effifusion.core.errors import AudioError
from effifusion.dsp.audio import read_wav, wav_truncation


def cut(path: Path, keep_bytes: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    return path


@pytest.mark.parametrize("fmt,subtype,channels,header", [
    ("WAV", "PCM_16", 1, 44), ("WAV", "FLOAT", 2, None), ("WAVEX", "PCM_24", 2, None),
])
def test_truncation_is_measured_from_the_header(tmp_path: Path, fmt: str, subtype: str, channels: int,
                                                header: int | None) -> None:
    x = 0.1 * np.random.default_rng(0).standard_normal((16000, channels))
    path = tmp_path / "x.wav"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    assert wav_truncation(path) is None
    block = channels * {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[subtype]
    size = path.stat().st_size
    data_start = size - 16000 * block  # every chunk before data: fmt (extensible or not), fact, ...
    if header is not None:
        assert data_start == header
    cut(path, data_start + 5000 * block + 1)  # a partial frame at the end counts as absent
    assert wav_truncation(path) == (16000, 5000)
    assert sf.info(path).frames == 5000  # what libsndfile reads without a word


def test_other_files_are_not_judged(tmp_path: Path) -> None:
    x = 0.1 * np.random.default_rng(0).standard_normal(16000)
    sf.write(tmp_path / "x.flac", x, 16000)
    sf.write(tmp_path / "x.rf64", x, 16000, format="RF64")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00")
    for name in ("x.flac", "x.rf64", "junk.wav", "missing.wav"):
        assert wav_truncation(tmp_path / name) is None
    sf.write(tmp_path / "stream.wav", x, 16000)
    header = bytearray((tmp_path / "stream.wav").read_bytes())
    header[40:44] = b"\xff\xff\xff\xff"  # "unknown length" as streaming writers leave it
    (tmp_path / "stream.wav").write_bytes(bytes(header))
    assert wav_truncation(tmp_path / "stream.wav") is None


def test_read_wav_refuses_a_file_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "p232_001.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(16000), 16000)
    assert read_wav(path)[0].shape == (16000,)
    cut(path, 44 + 2 * 7000)
    with pytest.raises(AudioError, match=r"p232_001.wav: cut short: header says 16000 frames, file holds 7000$"):
        read_wav(path)
