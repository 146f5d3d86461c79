"""`effifusion enhance`: run the exported model (or a checkpoint) over WAV files of any length and rate.

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
from typing import Callable

import numpy as np
import soundfile as sf
from tqdm import tqdm

from effifusion.dsp.audio import SILENCE_PEAK, resample
from effifusion.core.files import atomic_path
from effifusion.core.errors import AudioError, ConfigError, DataError

READ_BLOCK_S = 2.0  # seconds of input read per step while streaming a file
PCM_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "PCM_U8", "PCM_S8")
KEPT_SUBTYPES = PCM_SUBTYPES + ("FLOAT", "DOUBLE")


# ---------------------------------------------------------------------------------------------
# Models


class Enhancer:
    """A loaded model that enhances 16 kHz mono float32 waveforms (ONNX Runtime or PyTorch)."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], sample_rate: int, backend: str,
                 source: str):
        self._run_batch = run_batch
        self.sample_rate = int(sample_rate)
        self.backend = backend
        self.source = source

    def enhance(self, wav: np.ndarray) -> np.ndarray:
        """One segment [N] float32 at ``sample_rate`` → enhanced [N] float32 (the whole segment at once)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.shape[0] < 1:
            raise ValueError(f"expected a mono waveform [N] with N >= 1, got shape {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise ValueError("waveform contains NaN or infinite samples")
        return self._run_batch(np.ascontiguousarray(wav[None]))[0]

    def stream(self, chunk_s: float = 4.0, overlap_s: float = 1.0,
               on_chunk: Callable[[], None] | None = None) -> "ChunkedStream":
        """A push/flush stream enhancing one channel in cross-faded chunks (see ChunkedStream)."""
        chunk, overlap = chunk_geometry(chunk_s, overlap_s, self.sample_rate)
        return ChunkedStream(self.enhance, chunk, overlap, on_chunk)

    def enhance_long(self, wav: np.ndarray, chunk_s: float = 4.0, overlap_s: float = 1.0) -> np.ndarray:
        """[N] → [N] in chunks of ``chunk_s`` overlapping by ``overlap_s``; short input in one piece."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono waveform [N], got shape {wav.shape}")
        stream = self.stream(chunk_s, overlap_s)
        return np.concatenate([stream.push(wav), stream.flush()])


def chunk_geometry(chunk_s: float, overlap_s: float, sample_rate: int) -> tuple[int, int]:
    """(chunk, overlap) in samples; ConfigError when the chunking cannot work."""
    if not (isinstance(chunk_s, (int, float)) and math.isfinite(chunk_s) and chunk_s > 0):
        raise ConfigError(f"chunk length {chunk_s!r} s: must be a positive number of seconds")
    if not (isinstance(overlap_s, (int, float)) and math.isfinite(overlap_s) and 0 <= overlap_s < chunk_s):
        raise ConfigError(f"chunk overlap {overlap_s!r} s: must be >= 0 and shorter than the chunk "
                          f"({chunk_s} s)")
    chunk = int(round(chunk_s * sample_rate))
    overlap = int(round(overlap_s * sample_rate))
    if chunk < 0.1 * sample_rate:
        raise ConfigError(f"chunk length {chunk_s} s: too short (at least 0.1 s)")
    return chunk, overlap


def load_enhancer(model_path: str | Path, device: str = "cpu", threads: int | None = None) -> Enhancer:
    """An Enhancer for an exported ``.onnx`` (ONNX Runtime, CPU) or a model checkpoint ``.pt`` (PyTorch).

    ``threads`` sets ONNX Runtime's intra-op threads, or torch.set_num_threads for checkpoints
    (process-wide). A missing or unreadable model is a ConfigError naming the file.
    """
    path = Path(model_path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found "
                          "(run `dvc repro export`, or pass --model FILE.onnx|.pt)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_enhancer(path, device, threads)
    if suffix in (".pt", ".pth"):
        return _torch_enhancer(path, device, threads)
    raise ConfigError(f"{path}: unknown model type {path.suffix!r} (expected .onnx or a model checkpoint .pt)")


def _onnx_enhancer(path: Path, device: str, threads: int | None) -> Enhancer:
    from effifusion.inference.export import INPUT_NAME, OUTPUT_NAME, onnx_session

    if device != "cpu":
        raise ConfigError(f"--device {device}: ONNX models run on the CPU here; "
                          f"use a model checkpoint .pt for {device}")
    try:
        session = onnx_session(path, threads)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a loadable ONNX model ({first[:300]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs or "sample_rate" not in meta:
        raise ConfigError(f"{path}: not an effifusion export (inputs {inputs}, outputs {outputs}, "
                          f"metadata keys {sorted(meta)})")

    def run_batch(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    return Enhancer(run_batch, int(meta["sample_rate"]), "onnxruntime", str(path))


def _torch_enhancer(path: Path, device: str, threads: int | None) -> Enhancer:
    import torch

    from effifusion.models.registry import load_checkpoint

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if threads:
        torch.set_num_threads(int(threads))
    model, _ = load_checkpoint(path, map_location=device)

    def run_batch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.enhance(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return Enhancer(run_batch, model.sample_rate, "pytorch", str(path))


# ---------------------------------------------------------------------------------------------
# Streams: push blocks, get blocks; the concatenated output equals the whole-signal result


class ChunkedStream:
    """Chunked enhancement of one channel with a raised-cosine cross-fade, fed block by block.

    Chunks start every ``chunk - overlap`` samples while the signal goes on past their end; the last
    chunk is the final ``chunk`` samples (so it is never a short stub). Where chunk k+1 starts, the
    output fades from chunk k to chunk k+1 over ``overlap`` samples with weights sin² / cos², which
    sum to one, so chunk edges (least context) get the least weight. A signal no longer than
    ``chunk`` is enhanced in one piece. Memory: about two chunks plus the pushed block.
    """

    def __init__(self, enhance: Callable[[np.ndarray], np.ndarray], chunk: int, overlap: int,
                 on_chunk: Callable[[], None] | None = None):
        self._enhance = enhance
        self.chunk, self.overlap, self.step = chunk, overlap, chunk - overlap
        self._on_chunk = on_chunk
        t = (np.arange(overlap) + 0.5) / max(overlap, 1)
        self._fade_in = (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)
        self._buf = np.zeros(0, np.float32)  # input from absolute index _buf_start on
        self._buf_start = 0
        self._next_start = 0  # start of the next regular chunk
        self._pending = np.zeros(0, np.float32)  # provisional output from _out_pos on
        self._out_pos = 0
        self._started = False

    @staticmethod
    def count_chunks(n_samples: int, chunk: int, overlap: int) -> int:
        """How many chunks a signal of ``n_samples`` takes (for progress bars)."""
        if n_samples <= chunk:
            return 1
        return math.ceil((n_samples - chunk) / (chunk - overlap)) + 1

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add samples; return the output samples that are final so far (possibly none)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, x])
        out = []
        # A chunk is regular only when the signal goes on past its end.
        while self._buf_start + len(self._buf) > self._next_start + self.chunk:
            start = self._next_start
            self._process(start, self._input(start, start + self.chunk))
            out.append(self._emit(start))
            self._next_start += self.step
            # The next chunk starts at _next_start, or earlier if it is the last one: end - chunk.
            self._drop_input(min(self._next_start, self._buf_start + len(self._buf) - self.chunk))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        """End of signal: enhance the last chunk and return all remaining output."""
        end = self._buf_start + len(self._buf)
        if end == 0:
            return np.zeros(0, np.float32)
        start = max(end - self.chunk, 0)
        self._process(start, self._input(start, end))
        tail = self._emit(end)
        self._buf = np.zeros(0, np.float32)
        return tail

    def _input(self, start: int, end: int) -> np.ndarray:
        return self._buf[start - self._buf_start: end - self._buf_start]

    def _drop_input(self, keep_from: int) -> None:
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from

    def _process(self, start: int, segment: np.ndarray) -> None:
        y = np.asarray(self._enhance(segment), dtype=np.float32)
        if self._on_chunk is not None:
            self._on_chunk()
        if not self._started:
            self._pending, self._out_pos, self._started = y, start, True
            return
        offset = start - self._out_pos  # where the new chunk begins inside the pending output
        fade = min(self.overlap, len(y))
        w = self._fade_in[:fade]
        mixed = self._pending[offset: offset + fade] * (1 - w) + y[:fade] * w
        self._pending = np.concatenate([self._pending[:offset], mixed, y[fade:]])

    def _emit(self, upto: int) -> np.ndarray:
        n = max(0, upto - self._out_pos)
        out, self._pending = self._pending[:n], self._pending[n:]
        self._out_pos += n
        return out


class StreamResampler:
    """``audio.resample`` of a signal that arrives in blocks [n, C]: same samples as resampling it whole.

    The project resampler (torchaudio's windowed sinc) computes output block p (new' samples, rates
    reduced by their gcd to orig' → new') from input samples [p·orig' − w, p·orig' + orig' + w), zero
    outside the signal. Each push resamples the buffered input from a block boundary with at least
    w samples of left context and keeps only the output blocks whose inputs have all arrived.
    """

    def __init__(self, orig_sr: int, new_sr: int, channels: int):
        from effifusion.dsp.audio import RESAMPLING

        self.orig_sr, self.new_sr, self.channels = int(orig_sr), int(new_sr), int(channels)
        g = math.gcd(self.orig_sr, self.new_sr)
        self._o, self._n = self.orig_sr // g, self.new_sr // g
        base = min(self._o, self._n) * RESAMPLING["rolloff"]
        self._width = math.ceil(RESAMPLING["lowpass_filter_width"] * self._o / base)
        self._margin = math.ceil(self._width / self._o) * self._o  # left context, whole blocks
        self._buf = np.zeros((0, self.channels), np.float32)  # input from absolute index _buf_start on
        self._buf_start = 0
        self._next_block = 0  # next output block to produce
        self._total_in = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.channels)
        if self.orig_sr == self.new_sr:
            return x
        self._buf = np.concatenate([self._buf, x])
        self._total_in += len(x)
        last_block = (self._total_in - self._o - self._width) // self._o  # last block with all its input
        return self._produce(last_block + 1)

    def flush(self) -> np.ndarray:
        if self.orig_sr == self.new_sr:
            return np.zeros((0, self.channels), np.float32)
        total_out = math.ceil(self._n * self._total_in / self._o)
        out = self._produce(math.ceil(total_out / self._n), final=True)
        self._buf = np.zeros((0, self.channels), np.float32)
        return out

    def _produce(self, end_block: int, final: bool = False) -> np.ndarray:
        if end_block <= self._next_block:
            return np.zeros((0, self.channels), np.float32)
        seg_start = max(0, self._next_block * self._o - self._margin)  # a block boundary
        seg = self._buf[seg_start - self._buf_start:]
        y = resample(seg, self.orig_sr, self.new_sr).reshape(-1, self.channels)
        first = (self._next_block - seg_start // self._o) * self._n
        last = (end_block - seg_start // self._o) * self._n
        if final:
            last = min(last, len(y))
        out = y[first:last]
        self._next_block = end_block
        keep_from = max(0, self._next_block * self._o - self._margin)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
        return out


# ---------------------------------------------------------------------------------------------
# Files


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

