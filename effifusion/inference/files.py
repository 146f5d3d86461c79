"""`effifusion enhance`: run the exported model (or a checkpoint) over audio files of any length and rate.

The model sees 16 kHz mono chunks only. A file is streamed: read in blocks at its own rate,
resampled to 16 kHz (exactly as ``audio.resample`` would do on the whole file), enhanced in
overlapping chunks joined by a raised-cosine cross-fade, resampled back and written block by
block to a temporary file that replaces the output at the end. Memory stays bounded by the chunk
length whatever the file's duration, rate or channel count; each channel is enhanced on its own.

Attention in the TS-Conformer is global over a chunk, so memory grows with the square of the chunk
length (REFERENCE §7; the scores do not depend on the channel count C). Measured peak for one chunk
(bench/bench_infer.py, demo and paper configs): 10 s chunks 8.6-9.4 GB in ONNX Runtime, 4.2 GB in
PyTorch; 4 s chunks 1.4-1.8 GB and 0.8-1.2 GB, at the same or lower compute per second of audio.

Silent input (peak below ``audio.SILENCE_PEAK``, -80 dBFS) is legitimate in a recording and there is
nothing to enhance: silent files and silent channels are written unchanged, with a warning.
Unreadable and empty files fail with an AudioError naming the file.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from effifusion.core.errors import AudioError, DataError
from effifusion.core.files import atomic_path
from effifusion.dsp.audio import SILENCE_PEAK
from effifusion.dsp.streaming import ChunkedStream, StreamResampler, chunk_geometry
from effifusion.inference.backends import Enhancer, load_enhancer

READ_BLOCK_S = 2.0  # seconds of input read per step while streaming a file
PCM_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "PCM_U8", "PCM_S8")
KEPT_SUBTYPES = PCM_SUBTYPES + ("FLOAT", "DOUBLE")


def _open_input(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if f.frames <= 0:
        f.close()
        raise AudioError(f"{path}: contains no samples")
    return f


def _read_blocks(f: sf.SoundFile, path: Path, block: int):
    f.seek(0)
    while True:
        try:
            x = f.read(frames=block, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"{path}: read error ({exc})") from None
        if len(x) == 0:
            return
        yield x


def _scan(f: sf.SoundFile, path: Path, block: int) -> np.ndarray:
    """Per-channel peak over the whole file (one streaming pass); AudioError on NaN / inf."""
    peak = np.zeros(f.channels, np.float64)
    for x in _read_blocks(f, path, block):
        if not np.all(np.isfinite(x)):
            raise AudioError(f"{path}: contains NaN or infinite samples")
        peak = np.maximum(peak, np.abs(x).max(axis=0))
    return peak


def _output_format(f: sf.SoundFile) -> tuple[str, str]:
    """(format, subtype) for the output: the input's where soundfile can write it, else WAV / PCM_16."""
    if f.subtype in KEPT_SUBTYPES and sf.check_format(f.format, f.subtype):
        return f.format, f.subtype
    if sf.check_format(f.format, "PCM_16"):
        return f.format, "PCM_16"
    return "WAV", "PCM_16"


def _warn(message: str) -> None:
    tqdm.write(f"effifusion enhance: warning: {message}", file=sys.stderr)


def enhance_file(enhancer: Enhancer, src: Path, dst: Path, chunk_s: float = 4.0, overlap_s: float = 1.0,
                 progress: bool = True) -> Path:
    """Enhance one audio file into ``dst`` (same rate, channels, length; subtype kept where writable)."""
    src, dst = Path(src), Path(dst)
    chunk, overlap = chunk_geometry(chunk_s, overlap_s, enhancer.sample_rate)
    with _open_input(src) as f:
        sr, channels, frames = f.samplerate, f.channels, f.frames
        block = max(1, int(READ_BLOCK_S * sr))
        silent = _scan(f, src, block) < SILENCE_PEAK
        if silent.all():
            _warn(f"{src}: silent (peak below {SILENCE_PEAK:g}); written unchanged")
        elif silent.any():
            _warn(f"{src}: channel(s) {', '.join(str(c + 1) for c in np.flatnonzero(silent))} silent; "
                  "written unchanged")
        fmt, subtype = _output_format(f)
        with atomic_path(dst) as tmp:
            with sf.SoundFile(str(tmp), "w", samplerate=sr, channels=channels, subtype=subtype,
                              format=fmt) as out:
                writer = _Writer(out, frames, subtype in PCM_SUBTYPES)
                if silent.all():
                    for x in _read_blocks(f, src, block):
                        writer.write(x)
                else:
                    _enhance_stream(enhancer, f, src, block, silent, chunk, overlap, writer, progress)
                writer.finish()
    return dst


class _Writer:
    """Writes exactly ``frames`` frames: crops the resampling round trip's extra samples, clips PCM."""

    def __init__(self, out: sf.SoundFile, frames: int, clip: bool):
        self.out, self.frames, self.clip, self.written = out, frames, clip, 0

    def write(self, y: np.ndarray) -> None:
        y = y[: self.frames - self.written]
        if len(y):
            self.out.write(np.clip(y, -1.0, 1.0) if self.clip else y)
            self.written += len(y)

    def finish(self) -> None:
        if self.written < self.frames:  # the round trip never comes out short; pad defensively
            self.write(np.zeros((self.frames - self.written, self.out.channels), np.float32))


def _enhance_stream(enhancer: Enhancer, f: sf.SoundFile, src: Path, block: int, silent: np.ndarray,
                    chunk: int, overlap: int, writer: _Writer, progress: bool) -> None:
    """Resample → chunked enhancement per channel → resample back, block by block; silent channels
    are taken from the input through a delay line that keeps them aligned with the output."""
    sr, channels = f.samplerate, f.channels
    model_sr = enhancer.sample_rate
    active = [c for c in range(channels) if not silent[c]]
    n16 = math.ceil(f.frames * model_sr / sr)
    n_chunks = ChunkedStream.count_chunks(n16, chunk, overlap) * len(active)
    bar = tqdm(total=n_chunks, unit="chunk", desc=src.name, leave=False,
               disable=not progress or n_chunks < 2)
    to_model = StreamResampler(sr, model_sr, len(active))
    from_model = StreamResampler(model_sr, sr, len(active))
    streams = [ChunkedStream(enhancer.enhance, chunk, overlap, lambda: bar.update(1)) for _ in active]
    delay: deque[np.ndarray] = deque()  # input blocks not yet matched by output (for silent channels)

    def write(y: np.ndarray) -> None:
        if len(y) == 0:
            return
        full = np.zeros((len(y), channels), np.float32)
        full[:, active] = y
        if silent.any():
            original = _take(delay, len(y), channels)
            full[: len(original), silent] = original[:, silent]
        writer.write(full)

    try:
        for x in _read_blocks(f, src, block):
            if silent.any():
                delay.append(x)
            x16 = to_model.push(x[:, active])
            write(from_model.push(np.stack([s.push(x16[:, i]) for i, s in enumerate(streams)], axis=1)))
        x16 = to_model.flush()
        tails = [np.concatenate([s.push(x16[:, i]), s.flush()]) for i, s in enumerate(streams)]
        write(from_model.push(np.stack(tails, axis=1)))
        write(from_model.flush())
    finally:
        bar.close()


def _take(delay: deque, n: int, channels: int) -> np.ndarray:
    """Pop up to ``n`` frames from the front of a deque of [k, C] blocks."""
    parts, need = [], n
    while need > 0 and delay:
        head = delay[0]
        if len(head) <= need:
            parts.append(delay.popleft())
            need -= len(head)
        else:
            parts.append(head[:need])
            delay[0] = head[need:]
            need = 0
    return np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)


def _collect(inputs: list[str], output: Path) -> list[tuple[Path, Path]]:
    """(source, destination) pairs: files map to output/<name>, folders to output/<path inside the folder>."""
    out_root = output.resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                q for q in p.rglob("*")
                if q.is_file() and q.suffix.lower() == ".wav" and not q.name.startswith(".")
                and out_root not in q.resolve().parents
            )
            if not found:
                raise DataError(f"{p}: no .wav files in this folder")
            pairs += [(q, output / q.relative_to(p)) for q in found]
        elif p.is_file():
            pairs.append((p, output / p.name))
        else:
            raise AudioError(f"{p}: file or folder not found")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        key = dst.resolve()
        if key == src.resolve():
            raise DataError(f"{src}: output {dst} would overwrite the input (choose another -o folder)")
        if key in seen:
            raise DataError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
    return pairs


def enhance_paths(inputs: list[str], output: str, model: str, chunk_s: float = 4.0, device: str = "cpu"
                  ) -> list[Path]:
    """Enhance files and folders (recursively, *.wav) into ``output``; return the written paths.

    Files keep their name, folders their structure below the folder. Every file keeps its sample
    rate, channel count, length and (where writable) sample format. Chunks overlap by
    min(1 s, chunk_s / 4).
    """
    pairs = _collect(list(inputs), Path(output))
    enhancer = load_enhancer(model, device=device)
    overlap_s = min(1.0, chunk_s / 4) if isinstance(chunk_s, (int, float)) else 1.0
    chunk_geometry(chunk_s, overlap_s, enhancer.sample_rate)  # fail on a bad --chunk-s before any work
    written = []
    for src, dst in tqdm(pairs, unit="file", desc="enhance", disable=len(pairs) < 2):
        written.append(enhance_file(enhancer, src, dst, chunk_s, overlap_s))
    return written
