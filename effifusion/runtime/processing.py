"""Enhancing a signal of any rate, length and channel count with a model that works on mono pieces at
its own rate: the one code path of ``Enhancer.enhance(wav, sample_rate)`` and ``effifusion enhance``.

``EnhanceStream`` takes the input block by block ([n, C] at the input's rate) and gives back the
output block by block, so files of any length are processed in bounded memory. Per channel:

1. resample to the model's rate (``StreamResampler``: the project resampler, exactly);
2. enhance: in one piece when the input is at most ``max_piece_s`` long (one RMS normalisation,
   attention over the whole utterance: the model's exact output), else in ``max_piece_s`` chunks
   overlapping by min(1 s, max_piece_s / 4), joined by raised-cosine cross-fades (``ChunkedStream``);
3. resample back to the input's rate;
4. high band (inputs above the model's rate, ``high_band=True``): the model never sees what lies above
   its Nyquist frequency (8 kHz at 16 kHz; the resampler's filter starts rolling off at 7.58 kHz).
   That band, taken as input − (input resampled to the model's rate and back), i.e. exactly what the
   round trip removes, is added back scaled by the model's broadband gain: RMS(enhanced) /
   RMS(input round trip) per 20 ms block, at most 1, ramped linearly from block to block. Where the
   model removes noise the high band is turned down with it; speech keeps its air;
5. limit and mix: out = input + s·(enhanced − input) with s = mix·(1 − 10^(−atten_lim_db/20))
   (``EnhanceOptions.strength``).

Silent channels (peak below ``audio.SILENCE_PEAK``) and s = 0 (``atten_lim_db`` 0 or ``mix`` 0)
give the input back unchanged, bit for bit, without running the model.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.dsp.streaming import ChunkedStream, StreamResampler, chunk_geometry

MAX_PIECE_S = 60.0        # default: inputs up to this long are enhanced in one piece
MAX_OVERLAP_S = 1.0       # cross-fade between chunks of longer inputs (shorter for short chunks)
HIGH_BAND_BLOCK_S = 0.02  # blocks over which the model's gain is measured for the high band


@dataclass(frozen=True)
class EnhanceOptions:
    """How an input is enhanced (see the module docstring).

    atten_lim_db: at most this much noise removed, in dB (None: no limit; 0: the input unchanged):
        out = enhanced + g·(input − enhanced), g = 10^(−atten_lim_db/20), as DeepFilterNet's --atten-lim.
    mix: dry/wet, 1 = enhanced (default), 0 = the input. Applied after the limit: both are one linear
        blend out = input + s·(enhanced − input), s = mix·(1 − g); either one at its "off" end wins.
    high_band: keep the input's band above the model's Nyquist frequency, scaled by the model's gain
        (inputs above the model's rate only). False: the output has nothing above it.
    max_piece_s: longest input enhanced in one piece; longer ones go in chunks of this length.
    """

    atten_lim_db: float | None = None
    mix: float = 1.0
    high_band: bool = True
    max_piece_s: float = MAX_PIECE_S

    def __post_init__(self) -> None:
        db = self.atten_lim_db
        if db is not None and not (_is_number(db) and db >= 0):
            raise ConfigError(f"attenuation limit {db!r} dB: must be a number >= 0 (0: the input unchanged)")
        if not (_is_number(self.mix) and 0 <= self.mix <= 1):
            raise ConfigError(f"mix {self.mix!r}: must be in [0, 1] (1: enhanced, 0: the input)")
        chunk_geometry(self.max_piece_s, self.overlap_s, 16000)  # ConfigError on a bad length

    @property
    def overlap_s(self) -> float:
        s = self.max_piece_s
        return min(MAX_OVERLAP_S, s / 4) if _is_number(s) else MAX_OVERLAP_S

    @property
    def strength(self) -> float:
        """s in out = input + s·(enhanced − input)."""
        g = 0.0 if self.atten_lim_db is None else 10.0 ** (-self.atten_lim_db / 20.0)
        return float(self.mix) * (1.0 - g)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class EnhanceStream:
    """One input (``frames`` frames of ``channels`` at ``sample_rate``) enhanced block by block.

    ``push(x)`` takes [n, C] float32 and returns the output frames that are final so far; ``flush()``
    the rest. The outputs add up to exactly ``frames`` frames. ``segment(wav)`` enhances one mono
    piece at ``model_rate`` (``Enhancer.enhance_segment``); ``silent`` marks channels passed through.
    Memory: about two pieces (or chunks) per channel at the model's rate, plus the input waiting for
    its output (the same span at the input's rate) when blending, keeping the high band or passing
    silent channels through.
    """

    def __init__(self, segment: Callable[[np.ndarray], np.ndarray], model_rate: int, sample_rate: int,
                 channels: int, frames: int, options: EnhanceOptions, silent: np.ndarray | None = None,
                 on_chunk: Callable[[], None] | None = None):
        self.sr, self.model_rate, self.channels, self.frames = int(sample_rate), int(model_rate), channels, frames
        self.options = options
        silent = np.zeros(channels, bool) if silent is None else np.asarray(silent, bool)
        self.silent = silent
        self.active = [c for c in range(channels) if not silent[c]]
        self.strength = options.strength
        self.bypass = self.strength == 0.0 or not self.active
        self.emitted = 0    # output frames returned
        self._consumed = 0  # enhanced frames taken from the resampler (the high band holds some back)
        self.n_chunks = 0
        if self.bypass:
            return
        n_model = math.ceil(frames * self.model_rate / self.sr)
        piece, _ = chunk_geometry(options.max_piece_s, options.overlap_s, self.model_rate)
        if n_model <= piece:
            chunk, overlap = max(n_model, 1), 0  # one piece: ChunkedStream enhances it whole at flush
        else:
            chunk, overlap = chunk_geometry(options.max_piece_s, options.overlap_s, self.model_rate)
        self.n_chunks = ChunkedStream.count_chunks(n_model, chunk, overlap) * len(self.active)
        a = len(self.active)
        self._to_model = StreamResampler(self.sr, self.model_rate, a)
        self._from_model = StreamResampler(self.model_rate, self.sr, a)
        self._streams = [ChunkedStream(segment, chunk, overlap, on_chunk) for _ in self.active]
        self._band = self.sr > self.model_rate and options.high_band
        if self._band:
            self._round_trip = StreamResampler(self.model_rate, self.sr, a)  # the input's model-rate copy, back
            self._model_in: deque[np.ndarray] = deque()  # model-rate input not yet matched by output
            self._gain = _BandGain(max(1, round(HIGH_BAND_BLOCK_S * self.sr)), self.active)
        self._keep_input = self._band or self.strength != 1.0 or bool(silent.any())
        self._input: deque[np.ndarray] = deque()  # input blocks not yet matched by output

    def push(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.channels)
        if self.bypass:
            return self._crop(x)
        if self._keep_input:
            self._input.append(x)
        x_m = self._to_model.push(x[:, self.active])
        y_m = np.stack([s.push(x_m[:, i]) for i, s in enumerate(self._streams)], axis=1)
        return self._out(x_m, y_m, final=False)

    def flush(self) -> np.ndarray:
        if self.bypass:
            return np.zeros((0, self.channels), np.float32)
        x_m = self._to_model.flush()
        y_m = np.stack([np.concatenate([s.push(x_m[:, i]), s.flush()]) for i, s in enumerate(self._streams)],
                       axis=1)
        return self._out(x_m, y_m, final=True)

    def _out(self, x_m: np.ndarray, y_m: np.ndarray, final: bool) -> np.ndarray:
        y = self._from_model.push(y_m)
        if final:
            y = np.concatenate([y, self._from_model.flush()])
        rt = None
        if self._band:
            self._model_in.append(x_m)
            x_matched = _take(self._model_in, len(y_m), len(self.active))
            rt = self._round_trip.push(x_matched)
            if final:
                rt = np.concatenate([rt, self._round_trip.flush()])
        n = min(len(y), self.frames - self._consumed)  # the round trip's extra samples at the end go
        self._consumed += n
        if not self._keep_input:
            return self._crop(y[:n])
        # in slices of ~1 s: a chunk's output (up to max_piece_s) is not copied five times at once
        step = max(self.sr, 1)
        parts = [self._finish(y[i: min(i + step, n)], None if rt is None else rt[i: min(i + step, n)],
                              final and i + step >= n) for i in range(0, n, step)]
        if final and n == 0 and self._band:
            parts.append(self._finish(y[:0], rt[:0], True))
        return self._crop(np.concatenate(parts)) if parts else np.zeros((0, self.channels), np.float32)

    def _finish(self, y: np.ndarray, rt: np.ndarray | None, final: bool) -> np.ndarray:
        """Enhanced frames [k, active] → output frames [k', C]: high band, limit and mix, silent channels."""
        x = _take(self._input, len(y), self.channels)
        if self._band:
            x, y = self._gain.push(x, rt, y, final)
        x_act = x[:, self.active]
        if self.strength != 1.0:
            y = x_act + np.float32(self.strength) * (y - x_act)
        out = x.copy()
        out[:, self.active] = y
        return out

    def _crop(self, y: np.ndarray) -> np.ndarray:
        y = y[: self.frames - self.emitted]
        self.emitted += len(y)
        return y


class _BandGain:
    """Adds the high band (input − round trip) to the enhanced signal, scaled per ``block`` samples by
    min(1, RMS(enhanced) / RMS(round trip)), the gain ramping linearly over each block from the previous
    block's. Holds back less than one block, with the input frames (all channels) that go with it."""

    def __init__(self, block: int, active: list[int]):
        self.block, self.active = block, active
        self._x: np.ndarray | None = None  # held input frames [k, C]
        self._rt = np.zeros((0, len(active)), np.float32)
        self._y = np.zeros((0, len(active)), np.float32)
        self._prev: np.ndarray | None = None  # the previous block's gain (the first block starts at its own)

    def push(self, x: np.ndarray, rt: np.ndarray, y: np.ndarray, final: bool) -> tuple[np.ndarray, np.ndarray]:
        """(input frames [k, C], enhanced + gain·high band [k, active]) for the frames done, aligned."""
        self._x = x if self._x is None else np.concatenate([self._x, x])
        self._rt = np.concatenate([self._rt, rt])
        self._y = np.concatenate([self._y, y])
        n = len(self._y) if final else (len(self._y) // self.block) * self.block
        x, rt, y = self._x[:n], self._rt[:n], self._y[:n]
        self._x, self._rt, self._y = self._x[n:], self._rt[n:], self._y[n:]
        if n == 0:
            return x, y
        ramp = np.empty(y.shape, np.float32)
        prev = self._prev
        for s in range(0, n, self.block):
            e = min(n, s + self.block)
            e_y = np.mean(np.square(y[s:e], dtype=np.float64), axis=0)
            e_rt = np.mean(np.square(rt[s:e], dtype=np.float64), axis=0)
            gain = np.minimum(1.0, np.sqrt(e_y / np.maximum(e_rt, 1e-20))).astype(np.float32)
            prev = gain if prev is None else prev
            t = (np.arange(1, e - s + 1, dtype=np.float32) / (e - s))[:, None]
            ramp[s:e] = prev + (gain - prev) * t
            prev = gain
        self._prev = prev
        return x, y + ramp * (x[:, self.active] - rt)


def _take(queue: deque, n: int, channels: int) -> np.ndarray:
    """Pop up to ``n`` frames from the front of a deque of [k, C] blocks."""
    parts, need = [], n
    while need > 0 and queue:
        head = queue[0]
        if len(head) <= need:
            parts.append(queue.popleft())
            need -= len(head)
        else:
            parts.append(head[:need])
            queue[0] = head[need:]
            need = 0
    return np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)
