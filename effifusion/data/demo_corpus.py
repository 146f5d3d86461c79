"""The built-in demo corpus: a synthetic VoiceBank+DEMAND look-alike, generated in seconds.

The pipeline must run end to end without a 5 GB download, and later stages must not be able to
tell the demo from the real corpus. So the generator writes the same layout (48 kHz 16-bit pairs,
logfiles, DEMAND-style unseen noises at 16 kHz) with audio that behaves like speech in noise:
synthetic speakers (own pitch range, vocal-tract length, speaking rate) speak syllables made of
a glottal source shaped by parallel formant resonators, fricative noise, plosive bursts and pauses;
each VoiceBank noise label gets its own synthetic noise, mixed at the VoiceBank SNRs against the
P.56 active speech level. Everything is drawn from seeds derived from (seed, item name), so the
output is identical on every run and independent of generation order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft, rfftfreq
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from effifusion.core.files import atomic_dir
from effifusion.core.settings import DemoCorpusConfig, as_settings
from effifusion.data.mixing import active_speech_level, item_seed, mix_at_snr
from effifusion.dsp.audio import write_wav

TRAIN_NOISES = [
    "kitchen", "meeting", "cafeteria", "restaurant", "station", "car", "metro", "traffic", "ssn", "babble",
]
TRAIN_SNRS = [15.0, 10.0, 5.0, 0.0]
TEST_NOISES = ["bus", "cafe", "living", "office", "psquare"]
TEST_SNRS = [17.5, 12.5, 7.5, 2.5]
UNSEEN_ENVS = ["DWASHING", "NFIELD", "NPARK", "NRIVER", "OHALLWAY"]
DEMAND_SAMPLE_RATE = 16000

SPEECH_LEVEL_DB = -26.0      # P.56 active level of clean utterances (the ITU-T normalisation level)
NOISE_FLOOR_DB = -72.0       # recording-room floor under the clean speech: never digital silence
UNSEEN_NOISE_RMS_DB = -30.0

# Vowel formants (Hz) of an adult male vocal tract (Peterson & Barney style averages); speakers
# scale them by their vocal-tract factor.
VOWELS = np.array([
    [270, 2290, 3010, 3700], [390, 1990, 2550, 3600], [530, 1840, 2480, 3600], [660, 1720, 2410, 3500],
    [730, 1090, 2440, 3400], [570, 840, 2410, 3400], [440, 1020, 2240, 3300], [300, 870, 2240, 3300],
    [640, 1190, 2390, 3400], [490, 1350, 1690, 3300],
], dtype=np.float64)
HIGH_FORMANT = 4500.0
FORMANT_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 180.0, 250.0])
FORMANT_AMPLITUDES = np.array([1.0, -0.6, 0.35, -0.22, 0.12])   # signs alternate (parallel synthesis)
NASAL_FORMANTS = np.array([250.0, 1100.0, 2300.0, 3400.0])
PULSE_TABLE_SIZE = 4096      # samples per period of the tabulated glottal pulse


@dataclass(frozen=True)
class Speaker:
    """A synthetic voice: what makes two speakers of the demo corpus sound different."""

    f0: float              # median pitch (Hz)
    f0_spread: float       # relative pitch excursion of the intonation
    tract: float           # formant scale (shorter vocal tract -> higher formants)
    rate: float            # syllables per second
    open_phase: float      # Rosenberg pulse: opening fraction of the period
    close_phase: float     # closing fraction
    breath: float          # aspiration noise mixed into the glottal source


def make_speaker(rng: np.random.Generator) -> Speaker:
    female = rng.random() < 0.5
    return Speaker(
        f0=float(rng.uniform(175, 235) if female else rng.uniform(95, 135)),
        f0_spread=float(rng.uniform(0.08, 0.18)),
        tract=float(rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.05)),
        rate=float(rng.uniform(3.8, 5.5)),
        open_phase=float(rng.uniform(0.3, 0.45)),
        close_phase=float(rng.uniform(0.12, 0.22)),
        breath=float(rng.uniform(0.03, 0.12)),
    )


# ---------------------------------------------------------------------------------------------
# Speech


def _formant_filters(formants: np.ndarray, bandwidths: np.ndarray,
                     sr: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two-pole band-pass resonators (zeros at DC and Nyquist), each with unit gain at its peak."""
    filters = []
    for f, bw in zip(np.minimum(formants, 0.45 * sr), bandwidths):
        r, theta = np.exp(-np.pi * bw / sr), 2 * np.pi * f / sr
        a = np.array([1.0, -2 * r * np.cos(theta), r * r])
        z = np.exp(-1j * theta)
        peak = abs((1 - z * z) / (a[0] + a[1] * z + a[2] * z * z))
        filters.append((np.array([1.0, 0.0, -1.0]) / peak, a))
    return filters


def _envelope(n: int, sr: int, attack_s: float, release_s: float) -> np.ndarray:
    """Raised-cosine attack and release over a flat top."""
    env = np.ones(n)
    a, r = min(n // 2, int(attack_s * sr)), min(n // 2, int(release_s * sr))
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[n - r:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(r) / r)
    return env


def _smooth_random(n: int, sr: int, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    """Slowly varying random curve in about [-1, 1] (cosine-interpolated random knots)."""
    knots = max(2, int(np.ceil(n / sr * rate_hz)) + 2)
    values = rng.uniform(-1, 1, knots)
    control_sr = min(float(sr), 50.0 * rate_hz)  # evaluate the curve at a control rate, then interpolate
    pos = np.arange(int(np.ceil(n / sr * control_sr)) + 2) / control_sr * rate_hz
    i = np.minimum(pos.astype(int), knots - 2)
    w = 0.5 - 0.5 * np.cos(np.pi * (pos - i))
    curve = values[i] * (1 - w) + values[i + 1] * w
    return np.interp(np.arange(n) / sr * control_sr, np.arange(curve.size), curve)


def _glottal_source(n: int, sr: int, spk: Speaker, rng: np.random.Generator) -> np.ndarray:
    """Differentiated Rosenberg pulse train on a smooth, declining pitch contour, plus aspiration."""
    t = np.arange(n) / sr
    dur = max(t[-1], 1e-3) if n else 1e-3
    contour = (1 + spk.f0_spread * _smooth_random(n, sr, rng, 2.5)) * (1.08 - 0.16 * t / dur)
    jitter = 1 + 0.01 * _smooth_random(n, sr, rng, 40.0)
    f0 = spk.f0 * contour * jitter
    phase = np.cumsum(f0) / sr
    pulse = _rosenberg_table(spk.open_phase, spk.close_phase)[((phase % 1.0) * PULSE_TABLE_SIZE).astype(int)]
    source = np.diff(pulse, prepend=0.0) * sr / spk.f0      # lip radiation; ~unit scale
    source += spk.breath * rng.standard_normal(n) * (0.3 + pulse)
    return source


@lru_cache(maxsize=64)
def _rosenberg_table(open_phase: float, close_phase: float) -> np.ndarray:
    """One period of the Rosenberg glottal pulse, sampled finely (looked up instead of recomputed)."""
    u = np.arange(PULSE_TABLE_SIZE) / PULSE_TABLE_SIZE
    tp, tn = open_phase, close_phase
    return np.where(u < tp, 0.5 - 0.5 * np.cos(np.pi * u / tp),
                    np.where(u < tp + tn, np.cos(np.pi * (u - tp) / (2 * tn)), 0.0))


def _bandpass(x: np.ndarray, lo: float | None, hi: float | None, sr: int, order: int = 4) -> np.ndarray:
    """Butterworth band/high/low-pass (cutoffs rounded to 1/24 octave so filter designs are cached)."""
    lo = _on_grid(lo) if lo else None
    hi = _on_grid(hi) if hi and hi < 0.45 * sr else None
    if not lo and not hi:
        return x
    return sosfilt(_butter_sos(order, lo, hi, sr), x)


def _on_grid(freq: float) -> float:
    return float(2.0 ** (round(np.log2(freq) * 24) / 24))


@lru_cache(maxsize=1024)
def _butter_sos(order: int, lo: float | None, hi: float | None, sr: int) -> np.ndarray:
    if lo and hi:
        return butter(order, [lo, hi], btype="bandpass", fs=sr, output="sos")
    if lo:
        return butter(order, lo, btype="highpass", fs=sr, output="sos")
    return butter(order, hi, btype="lowpass", fs=sr, output="sos")


def synth_speech(n: int, sr: int, spk: Speaker, rng: np.random.Generator,
                 lead_s: float = 0.0, trail_s: float = 0.0, pauses: bool = True) -> np.ndarray:
    """``n`` samples of syllables from speaker ``spk``: silence for ``lead_s``/``trail_s`` at the ends.

    Syllable = optional onset (fricative, plosive burst after a closure, or nasal murmur) + vowel
    (glottal source through 5 formant resonators, pitch from a contour over the whole utterance)
    + optional coda; word gaps and phrase pauses between syllables.
    """
    out = np.zeros(n)
    source = _glottal_source(n, sr, spk, rng)
    pos, end = int(lead_s * sr), n - int(trail_s * sr)
    slow = 4.5 / spk.rate  # duration scale of this speaker's segments

    def voiced(start: int, length: int, formants: np.ndarray, gain: float, attack: float, release: float):
        length = min(length, end - start)
        if length <= 8:
            return
        seg = source[start:start + length] * _envelope(length, sr, attack, release)
        # Parallel formant synthesis: resonators summed with alternating signs (no deep notches
        # between formants) and falling amplitudes; F5 keeps some voiced energy above 4 kHz.
        formants = np.append(formants, HIGH_FORMANT * spk.tract)
        bw = FORMANT_BANDWIDTHS * rng.uniform(0.85, 1.2)
        amps = FORMANT_AMPLITUDES * rng.uniform(0.75, 1.25, FORMANT_AMPLITUDES.size)
        for (b, a), amp in zip(_formant_filters(formants, bw, sr), amps):
            out[start:start + length] += gain * amp * lfilter(b, a, seg)

    def noise_burst(start: int, length: int, lo: float, hi: float | None, gain: float, attack: float):
        length = min(length, end - start)
        if length <= 8:
            return
        seg = _bandpass(rng.standard_normal(length), lo, hi, sr)
        seg *= _envelope(length, sr, attack, 0.4 * length / sr)
        out[start:start + length] += gain * seg

    while True:
        syl_len = int(rng.uniform(0.09, 0.2) * slow * sr)
        if pos + syl_len + int(0.05 * sr) > end:
            break
        onset = rng.choice(4, p=[0.25, 0.3, 0.2, 0.25])          # none, fricative, plosive, nasal
        if onset == 1:
            length = int(rng.uniform(0.05, 0.12) * slow * sr)
            lo = rng.uniform(2000, 4500) * spk.tract
            hi = min(lo * rng.uniform(1.6, 2.6), 0.45 * sr)
            noise_burst(pos, length, lo, hi, rng.uniform(0.05, 0.2), 0.02)
            pos += int(0.8 * length)
        elif onset == 2:
            pos += int(rng.uniform(0.03, 0.06) * slow * sr)      # closure: silence
            noise_burst(pos, int(rng.uniform(0.008, 0.02) * sr), rng.uniform(800, 2500), None,
                        rng.uniform(0.15, 0.4), 0.001)
            pos += int(0.015 * sr)
        elif onset == 3:
            length = int(rng.uniform(0.04, 0.08) * slow * sr)
            nasal_gain = rng.uniform(0.2, 0.35)
            voiced(pos, length + int(0.02 * sr), NASAL_FORMANTS * spk.tract, nasal_gain, 0.015, 0.02)
            pos += length
        if pos + syl_len > end:
            break
        formants = VOWELS[rng.integers(len(VOWELS))] * spk.tract * rng.uniform(0.95, 1.05, 4)
        gain, attack, release = rng.uniform(0.55, 1.0), rng.uniform(0.01, 0.03), rng.uniform(0.03, 0.06)
        voiced(pos, syl_len, formants, gain, attack, release)
        pos += syl_len
        coda = rng.choice(3, p=[0.55, 0.25, 0.2])                # none, fricative, nasal
        if coda == 1:
            length = int(rng.uniform(0.05, 0.11) * slow * sr)
            lo = rng.uniform(2500, 5000) * spk.tract
            coda_gain = rng.uniform(0.04, 0.15)
            noise_burst(pos - int(0.01 * sr), length, lo, min(lo * 2.2, 0.45 * sr), coda_gain, 0.015)
            pos += length
        elif coda == 2:
            length = int(rng.uniform(0.04, 0.08) * slow * sr)
            nasal_gain = rng.uniform(0.15, 0.3)
            voiced(pos - int(0.015 * sr), length, NASAL_FORMANTS * spk.tract, nasal_gain, 0.015, 0.03)
            pos += length
        gap = rng.random()
        if pauses and gap < 0.07:
            pos += int(rng.uniform(0.15, 0.3) * sr)               # phrase pause
        elif gap < 0.4:
            pos += int(rng.uniform(0.02, 0.07) * sr)              # word gap
    return out


def make_utterance(n: int, sr: int, spk: Speaker, rng: np.random.Generator) -> np.ndarray:
    """A clean utterance: speech between 0.1-0.2 s silences, at the P.56 level of a studio recording."""
    speech = synth_speech(n, sr, spk, rng, lead_s=rng.uniform(0.1, 0.2), trail_s=rng.uniform(0.1, 0.2))
    level = SPEECH_LEVEL_DB + rng.uniform(-2.0, 2.0)
    speech *= 10 ** ((level - active_speech_level(speech, sr)) / 20)
    floor = _bandpass(rng.standard_normal(n), 40, 8000, sr, order=2)
    floor *= 10 ** (NOISE_FLOOR_DB / 20) / np.sqrt(np.mean(floor ** 2))
    return speech + floor


# ---------------------------------------------------------------------------------------------
# Noise building blocks (all return float64 arrays of n samples, arbitrary scale)


def _shaped_noise(n: int, sr: int, rng: np.random.Generator, gain_of_freq) -> np.ndarray:
    """White noise shaped in the frequency domain by ``gain_of_freq(f)`` (amplitude)."""
    size = next_fast_len(n, real=True)
    spec = rfft(rng.standard_normal(size))
    f = rfftfreq(size, 1 / sr)
    return irfft(spec * gain_of_freq(np.maximum(f, 1.0)), size)[:n]


def _colored(n: int, sr: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """1/f^exponent power spectrum: 1 = pink, 2 = brown; flat below 20 Hz."""
    return _shaped_noise(n, sr, rng, lambda f: np.maximum(f, 20.0) ** (-exponent / 2))


def _unit(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(x ** 2))
    return x / rms if rms > 0 else x


def _speech_shaped(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Stationary noise with a long-term average speech spectrum (peak near 500 Hz, -9 dB/oct above)."""
    def ltass(f):
        rise = (f / 150.0) ** 2 / (1 + (f / 150.0) ** 2)
        return rise / (1 + (f / 550.0) ** 2) ** 0.75
    return _shaped_noise(n, sr, rng, ltass)


def make_talkers(sr: int, rng: np.random.Generator, count: int = 8,
                 seconds: float = 10.0) -> list[np.ndarray]:
    """A pool of background talkers (continuous speech, unit RMS) that babble-type noises draw from.

    Synthesising every babble voice afresh would cost more than the corpus itself; excerpts of a
    shared pool at random offsets sound just as varied.
    """
    n = int(seconds * sr)
    return [_unit(synth_speech(n, sr, make_speaker(rng), rng, pauses=k % 2 == 0)) for k in range(count)]


def _talker(n: int, rng: np.random.Generator, talkers: list[np.ndarray],
            index: int | None = None) -> np.ndarray:
    """``n`` samples of one pool talker from a random offset (looped past the track's end)."""
    track = talkers[rng.integers(len(talkers)) if index is None else index]
    return track[(rng.integers(track.size) + np.arange(n)) % track.size]


def _babble(n: int, rng: np.random.Generator, talkers: list[np.ndarray], voices: int) -> np.ndarray:
    """Several pool talkers at once, each at a random level."""
    chosen = rng.choice(len(talkers), size=min(voices, len(talkers)), replace=False)
    return sum(_talker(n, rng, talkers, int(k)) * rng.uniform(0.5, 1.0) for k in chosen)


def _events(n: int, sr: int, rng: np.random.Generator, rate_hz: float, templates: list[np.ndarray],
            periodic: bool = False, jitter: float = 0.0) -> np.ndarray:
    """Transient events (Poisson or periodic) drawn from ``templates``, with random amplitudes."""
    out = np.zeros(n)
    if periodic:
        times = np.arange(rng.uniform(0, 1 / rate_hz), n / sr, 1 / rate_hz)
        times = times + jitter * rng.standard_normal(times.size)
    else:
        times = np.cumsum(rng.exponential(1 / rate_hz, int(n / sr * rate_hz * 2) + 4))
    times = times[(times >= 0) & (times < n / sr)]
    idx = (times * sr).astype(int)
    which = rng.integers(len(templates), size=idx.size)
    amps = rng.uniform(0.3, 1.0, idx.size)
    for start, k, amp in zip(idx, which, amps):
        length = min(templates[k].size, n - start)
        out[start:start + length] += amp * templates[k][:length]
    return out


def _damped_tones(sr: int, rng: np.random.Generator, freq_range: tuple[float, float],
                  decay_s: tuple[float, float], partials: int = 3, count: int = 5) -> list[np.ndarray]:
    """Templates of struck objects: a few exponentially decaying partials."""
    templates = []
    for _ in range(count):
        decay = rng.uniform(*decay_s)
        t = np.arange(int(decay * 5 * sr)) / sr
        tpl = sum(np.sin(2 * np.pi * rng.uniform(*freq_range) * t + rng.uniform(0, 2 * np.pi))
                  * rng.uniform(0.3, 1)
                  for _ in range(partials))
        templates.append(tpl * np.exp(-t / decay))
    return templates


def _thuds(sr: int, rng: np.random.Generator, freq_range: tuple[float, float], decay_s: float,
           count: int = 3) -> list[np.ndarray]:
    """Templates of soft low impacts (footsteps, drum thumps): low-passed noise with a fast decay."""
    templates = []
    for _ in range(count):
        t = np.arange(int(decay_s * 5 * sr)) / sr
        body = np.sin(2 * np.pi * rng.uniform(*freq_range) * t) + 0.5 * _bandpass(rng.standard_normal(t.size),
                                                                                  None, 2000, sr)
        templates.append(body * np.exp(-t / decay_s))
    return templates


def _reverb(x: np.ndarray, sr: int, rng: np.random.Generator, rt60: float, wet: float = 0.7) -> np.ndarray:
    """Room: convolution with exponentially decaying noise (60 dB down after ``rt60`` s)."""
    t = np.arange(int(rt60 * sr)) / sr
    ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    ir = _bandpass(ir, 80, 6000, sr, order=2)
    ir *= wet / np.sqrt(np.sum(ir ** 2))
    ir[0] += 1 - wet
    return fftconvolve(x, ir)[: x.size]


def _harmonics(n: int, sr: int, rng: np.random.Generator, f0: float, count: int, wobble: float,
               tilt: float = 1.0) -> np.ndarray:
    """Harmonic hum (engines, motors) with a slowly wandering fundamental."""
    f = f0 * (1 + wobble * _smooth_random(n, sr, rng, 0.5))
    phase = 2 * np.pi * np.cumsum(f) / sr
    return sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k ** tilt for k in range(1, count + 1))


def _slow_swells(n: int, sr: int, rng: np.random.Generator, rate_hz: float, width_s: float) -> np.ndarray:
    """Gain curve of things passing by: gaussian bumps at random times over a floor of 0.2."""
    t = np.arange(n) / sr
    gain = np.full(n, 0.2)
    for c in np.cumsum(rng.exponential(1 / rate_hz, int(n / sr * rate_hz * 2) + 3)) - width_s:
        gain += rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((t - c) / (width_s / 2)) ** 2)
    return gain


def _mix(*parts: tuple[float, np.ndarray]) -> np.ndarray:
    """Sum of components, each normalised to unit RMS and weighted by its level in dB."""
    return sum(10 ** (db / 20) * _unit(x) for db, x in parts)


# ---------------------------------------------------------------------------------------------
# The noises: VoiceBank training labels, test labels, unseen DEMAND environments


def _kitchen(n, sr, rng, talkers):
    clatter = _events(n, sr, rng, 3.0, _damped_tones(sr, rng, (1500, 7000), (0.02, 0.12)))
    water = _bandpass(rng.standard_normal(n), 1500, 9000, sr) * (1 + 0.5 * _smooth_random(n, sr, rng, 3))
    return _mix((0, clatter), (-8, water), (-20, _harmonics(n, sr, rng, 100, 3, 0.001)))


def _meeting(n, sr, rng, talkers):
    voices = _bandpass(_babble(n, rng, talkers, 3), 100, 3500, sr)
    return _mix((0, _reverb(voices, sr, rng, 0.5)), (-15, _colored(n, sr, rng, 1.0)))


def _cafeteria(n, sr, rng, talkers):
    clatter = _events(n, sr, rng, 1.5, _damped_tones(sr, rng, (2000, 6000), (0.03, 0.1)))
    crowd = _reverb(_babble(n, rng, talkers, 6), sr, rng, 0.8)
    return _mix((0, crowd), (-6, clatter), (-14, _colored(n, sr, rng, 1.0)))


def _restaurant(n, sr, rng, talkers):
    t = np.arange(n) / sr
    notes = rng.choice([196.0, 246.9, 293.7, 329.6, 392.0], 3, replace=False)
    music = sum(np.sin(2 * np.pi * f * k * t) / k ** 1.5 for f in notes for k in range(1, 5))
    music *= 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
    babble = _bandpass(_babble(n, rng, talkers, 8), None, 4000, sr)
    clatter = _events(n, sr, rng, 0.7, _damped_tones(sr, rng, (2500, 5000), (0.03, 0.08)))
    return _mix((0, babble), (-9, music), (-9, clatter))


def _station(n, sr, rng, talkers):
    hall = _reverb(_colored(n, sr, rng, 1.5), sr, rng, 1.5)
    announcement = _bandpass(_talker(n, rng, talkers), 300, 3400, sr)
    return _mix((0, hall), (-4, _reverb(announcement, sr, rng, 1.5)))


def _car(n, sr, rng, talkers):
    rumble = _bandpass(_colored(n, sr, rng, 2.0), None, 300, sr)
    engine = _harmonics(n, sr, rng, rng.uniform(25, 45), 8, 0.05)
    tyres = _bandpass(_colored(n, sr, rng, 1.0), 200, 2000, sr)
    return _mix((0, rumble), (-6, engine), (-12, tyres))


def _metro(n, sr, rng, talkers):
    t = np.arange(n) / sr
    rumble = _bandpass(_colored(n, sr, rng, 2.0), None, 500, sr)
    band = _bandpass(rng.standard_normal(n), 1000, 3000, sr)
    band *= 1 + 0.6 * np.sin(2 * np.pi * rng.uniform(1, 2) * t)
    clacks = _events(n, sr, rng, 1.1, _thuds(sr, rng, (150, 400), 0.02), periodic=True, jitter=0.01)
    squeal = np.sin(2 * np.pi * rng.uniform(3000, 5000) * t) * np.maximum(_smooth_random(n, sr, rng, 0.4), 0)
    return _mix((0, rumble), (-6, band), (-4, clacks), (-14, squeal))


def _traffic(n, sr, rng, talkers):
    passing = _bandpass(_colored(n, sr, rng, 1.0), 100, 2000, sr) * _slow_swells(n, sr, rng, 0.6, 2.5)
    return _mix((0, passing), (-10, _colored(n, sr, rng, 1.5)))


def _ssn(n, sr, rng, talkers):
    return _speech_shaped(n, sr, rng)


def _babble_noise(n, sr, rng, talkers):
    return _babble(n, rng, talkers, 5)


def _bus(n, sr, rng, talkers):
    engine = _harmonics(n, sr, rng, rng.uniform(55, 85), 6, 0.08, tilt=0.7)
    body = _bandpass(rng.standard_normal(n), 200, 1200, sr) * (1 + 0.5 * _smooth_random(n, sr, rng, 0.8))
    hiss = _bandpass(rng.standard_normal(n), 3000, None, sr) * _slow_swells(n, sr, rng, 0.15, 0.8) ** 3
    rumble = _bandpass(_colored(n, sr, rng, 2.0), None, 400, sr)
    return _mix((0, rumble), (-5, engine), (-8, body), (-12, hiss))


def _cafe(n, sr, rng, talkers):
    clatter = _events(n, sr, rng, 2.5, _damped_tones(sr, rng, (1200, 4500), (0.04, 0.15), partials=2))
    steam = _bandpass(rng.standard_normal(n), 2500, 8000, sr) * _slow_swells(n, sr, rng, 0.2, 1.5) ** 2
    return _mix((0, _reverb(_babble(n, rng, talkers, 4), sr, rng, 0.6)), (-5, clatter), (-12, steam))


def _living(n, sr, rng, talkers):
    t = np.arange(n) / sr
    tv = _bandpass(_talker(n, rng, talkers), 200, 5000, sr)
    tv *= 1 + 0.3 * _smooth_random(n, sr, rng, 0.5)
    tune = sum(np.sin(2 * np.pi * f * t) * np.maximum(np.sin(2 * np.pi * 0.5 * t + i), 0) for i, f in
               enumerate(rng.uniform(300, 800, 3)))
    return _mix((0, _reverb(tv, sr, rng, 0.4)), (-10, tune), (-18, _harmonics(n, sr, rng, 50, 4, 0.0)))


def _office(n, sr, rng, talkers):
    click_len = int(0.006 * sr)
    decay = np.exp(-np.arange(click_len) / (0.0015 * sr))
    clicks = [decay * _bandpass(rng.standard_normal(click_len), 1500, 9000, sr) for _ in range(4)]
    typing = _events(n, sr, rng, 6.0, clicks) * (_slow_swells(n, sr, rng, 0.3, 3.0) > 0.5)
    fan = _bandpass(_colored(n, sr, rng, 1.0), None, 1000, sr)
    hum = _harmonics(n, sr, rng, 120, 3, 0.002)
    return _mix((0, fan), (-4, typing), (-10, hum), (-14, rng.standard_normal(n)))


def _psquare(n, sr, rng, talkers):
    crowd = _reverb(_bandpass(_babble(n, rng, talkers, 5), None, 2000, sr), sr, rng, 1.0)
    wind = _bandpass(_colored(n, sr, rng, 2.0), None, 500, sr) * (1 + 0.7 * _smooth_random(n, sr, rng, 0.3))
    steps = _events(n, sr, rng, 2.0, _thuds(sr, rng, (100, 300), 0.03), periodic=True, jitter=0.03)
    return _mix((0, crowd), (-4, wind), (-8, steps))


def _washing(n, sr, rng, talkers):
    rotation = rng.uniform(0.8, 1.2)
    thumps = _events(n, sr, rng, rotation, _thuds(sr, rng, (60, 150), 0.06), periodic=True, jitter=0.02)
    t = np.arange(n) / sr
    swish = _bandpass(rng.standard_normal(n), 300, 3000, sr) * (1 + 0.8 * np.sin(2 * np.pi * rotation * t))
    return _mix((0, thumps), (-6, _harmonics(n, sr, rng, 50, 6, 0.002)), (-8, swish))


def _field(n, sr, rng, talkers):
    gusts = (1 + _smooth_random(n, sr, rng, 0.3)) ** 2
    wind = _bandpass(_colored(n, sr, rng, 2.0), 20, 400, sr) * gusts
    leaves = _bandpass(rng.standard_normal(n), 2000, 7000, sr) * gusts * (1 + _smooth_random(n, sr, rng, 8))
    return _mix((0, wind), (-14, leaves))


def _park(n, sr, rng, talkers):
    chirps = []
    for _ in range(6):
        length = rng.uniform(0.04, 0.15)
        t = np.arange(int(length * sr)) / sr
        f_start, f_end = rng.uniform(2500, 6000, 2)
        phase = 2 * np.pi * (f_start * t + (f_end - f_start) * t ** 2 / (2 * length))
        chirps.append(np.sin(phase) * np.sin(np.pi * t / length) ** 2)
    birds = _events(n, sr, rng, 3.0, chirps)
    return _mix((0, _colored(n, sr, rng, 1.0)), (-4, birds))


def _river(n, sr, rng, talkers):
    flow = _bandpass(_colored(n, sr, rng, 2.0), 30, 1500, sr)
    bubbling = _bandpass(rng.standard_normal(n), 200, 2000, sr) * (1 + _smooth_random(n, sr, rng, 20)) ** 2
    gurgles = _events(n, sr, rng, 4.0, _damped_tones(sr, rng, (300, 800), (0.01, 0.03), partials=1))
    return _mix((0, flow), (-3, bubbling), (-9, gurgles))


def _hallway(n, sr, rng, talkers):
    steps = _events(n, sr, rng, 1.8, _thuds(sr, rng, (80, 250), 0.015) + _damped_tones(sr, rng, (1500, 3000),
                                                                                     (0.005, 0.01)),
                    periodic=True, jitter=0.04) * (_slow_swells(n, sr, rng, 0.1, 6.0) > 0.5)
    voices = _bandpass(_babble(n, rng, talkers, 2), None, 2500, sr)
    return _mix((0, _reverb(steps, sr, rng, 1.2, wet=0.8)), (-6, _reverb(voices, sr, rng, 1.2, wet=0.9)),
                (-18, _colored(n, sr, rng, 1.0)))


NOISE_GENERATORS = {
    "kitchen": _kitchen, "meeting": _meeting, "cafeteria": _cafeteria, "restaurant": _restaurant,
    "station": _station, "car": _car, "metro": _metro, "traffic": _traffic, "ssn": _ssn,
    "babble": _babble_noise,
    "bus": _bus, "cafe": _cafe, "living": _living, "office": _office, "psquare": _psquare,
    "DWASHING": _washing, "NFIELD": _field, "NPARK": _park, "NRIVER": _river, "OHALLWAY": _hallway,
}


def make_noise(label: str, n: int, sr: int, rng: np.random.Generator,
               talkers: list[np.ndarray]) -> np.ndarray:
    """``n`` samples of the synthetic noise called ``label`` (a VoiceBank label or DEMAND env), unit RMS.

    ``talkers`` (from ``make_talkers`` at the same rate) supplies the voices of babble-type noises.
    """
    return _unit(NOISE_GENERATORS[label](n, sr, rng, talkers))


# ---------------------------------------------------------------------------------------------
# The corpus


def generate_demo_corpus(raw_dir: Path, cfg: DemoCorpusConfig | dict[str, Any], seed: int) -> dict:
    """Write the demo corpus into ``raw_dir`` in the VoiceBank+DEMAND layout; return its description.

    ``cfg`` is params.yaml's ``corpus.demo`` section. Builds in a temporary folder beside ``raw_dir`` and renames
    it into place, replacing an older ``raw_dir``. The returned dict is corpus.json's content plus
    the generation time.
    """
    start = time.perf_counter()
    raw_dir = Path(raw_dir)
    cfg = as_settings(cfg, DemoCorpusConfig)
    sr, train_spk, test_spk = cfg.sample_rate, list(cfg.train_speakers), list(cfg.test_speakers)
    min_s, max_s = cfg.min_duration_s, cfg.max_duration_s
    splits = [
        ("trainset_28spk", "clean_trainset_28spk_wav", "noisy_trainset_28spk_wav", "log_trainset_28spk.txt",
         train_spk, cfg.train_utterances_per_speaker, TRAIN_NOISES, TRAIN_SNRS, "{:g}"),
        ("testset", "clean_testset_wav", "noisy_testset_wav", "log_testset.txt",
         test_spk, cfg.test_utterances_per_speaker, TEST_NOISES, TEST_SNRS, "{:e}"),
    ]

    with atomic_dir(raw_dir) as tmp:
        (tmp / "logfiles").mkdir()
        counts = {}
        talkers = make_talkers(sr, np.random.default_rng(item_seed(seed, "talkers", sr)))
        for name, clean_dir, noisy_dir, log_name, speakers, per_spk, noises, snrs, snr_fmt in splits:
            conditions = balanced_conditions(noises, snrs, len(speakers) * per_spk,
                                             np.random.default_rng(item_seed(seed, "conditions", name)))
            log_lines = []
            for s_idx, spk_name in enumerate(speakers):
                spk = make_speaker(np.random.default_rng(item_seed(seed, "speaker", spk_name)))
                for u in range(per_spk):
                    utt = f"{spk_name}_{u + 1:03d}"
                    noise_label, snr = conditions[s_idx * per_spk + u]
                    clean, noisy = _make_pair(utt, spk, noise_label, snr, sr, min_s, max_s, seed, talkers)
                    write_wav(tmp / clean_dir / f"{utt}.wav", clean, sr)
                    write_wav(tmp / noisy_dir / f"{utt}.wav", noisy, sr)
                    log_lines.append(f"{utt} {noise_label} {snr_fmt.format(snr)}\n")
            (tmp / "logfiles" / log_name).write_text("".join(log_lines))
            counts[name] = len(log_lines)

        demand_s = cfg.unseen_noise_duration_s
        demand_rng = np.random.default_rng(item_seed(seed, "talkers", "demand"))
        demand_talkers = make_talkers(DEMAND_SAMPLE_RATE, demand_rng, count=4)
        for env in UNSEEN_ENVS:
            n = int(demand_s * DEMAND_SAMPLE_RATE)
            env_rng = np.random.default_rng(item_seed(seed, "demand", env))
            noise = make_noise(env, n, DEMAND_SAMPLE_RATE, env_rng, demand_talkers)
            noise *= 10 ** (UNSEEN_NOISE_RMS_DB / 20)
            noise *= min(1.0, 0.9 / np.max(np.abs(noise)))
            write_wav(tmp / "demand" / env / "ch01.wav", noise, DEMAND_SAMPLE_RATE)

        corpus = {
            "name": "demo",
            "source": "built-in synthetic corpus (effifusion.data.demo_corpus), VoiceBank+DEMAND layout",
            "seed": int(seed),
            "sample_rate": sr,
            "counts": {"train": counts["trainset_28spk"], "test": counts["testset"],
                       "train_speakers": len(train_spk), "test_speakers": len(test_spk),
                       "demand_envs": len(UNSEEN_ENVS)},
            "train_noises": TRAIN_NOISES, "train_snrs_db": TRAIN_SNRS,
            "test_noises": TEST_NOISES, "test_snrs_db": TEST_SNRS,
            "demand_envs": UNSEEN_ENVS, "demand_channels": ["ch01"], "demand_sample_rate": DEMAND_SAMPLE_RATE,
            "config": cfg.to_dict(),
        }
        (tmp / "corpus.json").write_text(json.dumps(corpus, indent=2) + "\n")
    return {**corpus, "seconds": round(time.perf_counter() - start, 3)}


def balanced_conditions(noises: list[str], snrs: list[float], count: int,
                        rng: np.random.Generator) -> list[tuple[str, float]]:
    """``count`` (noise, SNR) conditions in random order, each label and SNR used about equally.

    Slot i gets label i mod L and SNR (i + i div L) mod S: every L consecutive slots use every label
    once, and L*S slots cover every (label, SNR) pair once (as VoiceBank spreads its conditions).
    """
    labels = [noises[k] for k in rng.permutation(len(noises))]
    slots = [(labels[i % len(labels)], snrs[(i + i // len(labels)) % len(snrs)]) for i in range(count)]
    return [slots[k] for k in rng.permutation(count)]


def _make_pair(utt: str, spk: Speaker, noise_label: str, snr: float, sr: int, min_s: float, max_s: float,
               seed: int, talkers: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Clean utterance and its noisy version; both scaled down together if the mixture would clip."""
    rng = np.random.default_rng(item_seed(seed, "utterance", utt))
    n = int(rng.uniform(min_s, max_s) * sr)
    clean = make_utterance(n, sr, spk, rng)
    noise = make_noise(noise_label, n, sr, np.random.default_rng(item_seed(seed, "noise", utt)), talkers)
    noisy, _ = mix_at_snr(clean, noise, snr, sr)
    peak = np.max(np.abs(noisy))
    if peak > 0.99:
        clean, noisy = clean * 0.99 / peak, noisy * 0.99 / peak
    return clean, noisy
