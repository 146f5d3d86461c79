"""Streaming building blocks: chunked enhancement with cross-fades, and block-wise resampling.

Both take a signal block by block and give back exactly what processing the whole signal would
(up to the chunking itself), with memory bounded by a chunk or a resampler window: what lets
``effifusion enhance`` handle recordings of any length.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.dsp.audio import resample


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

    The project resampler (dsp/resampler.py, torchaudio's windowed sinc) computes output block p (new'
    samples, rates reduced by their gcd to orig' → new') from input samples [p·orig' − w,
    p·orig' + orig' + w), zero outside the signal, each sample as a fixed sum over that window. Each
    push resamples the buffered input from a block boundary with at least w samples of left context
    and keeps only the output blocks whose inputs have all arrived: the samples of the whole signal's
    resampling, bit for bit.
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
