"""Speech-enhancement metrics: wide-band PESQ, Loizou's CSIG/CBAK/COVL, SSNR, STOI, ESTOI, SI-SDR,
SI-SIR and SI-SAR.

Every VoiceBank+DEMAND paper reports these through Loizou's `composite.m` (in its common Python
port, "compute_metrics"), so the composite measures here follow that algorithm detail for detail
(docs/reference.md §5) - its window, frame count, energy floors and 95 % trimming - written with framed
numpy arrays instead of per-frame loops. The real test pairs the tests use (tests/metrics) pin the numbers.

CSIG, CBAK and COVL come in two conventions (``convention=``), from the same frames:

- ``"matlab"`` (the default): Loizou's MATLAB code, which is what the Python port gives on
  int16-scale samples.
- ``"published"``: the Python port as the CMGAN and MP-SENet evaluation scripts call it, on float
  samples in [-1, 1]. Its WSS divides each frame by 32768 before flooring the critical-band
  energies at 1e-10, so quiet bands hit the floor; CSIG comes out about 0.09 and CBAK/COVL about
  0.08 higher (up to 0.3 on a file). Published VoiceBank+DEMAND tables were made this way.

That WSS floor is the only place the sample scale enters (LLR is a ratio of quadratic forms in
the same frame, SSNR a ratio of energies; PESQ and STOI are unaffected), so the two conventions
differ only in ``_WSS_POWER_SCALE``. Signals are float samples in [-1, 1] in both.

ESTOI (extended STOI, Jensen & Taal 2016) and SI-SDR (scale-invariant SDR, Le Roux et al. 2019) are
what diffusion-model papers report next to PESQ; like PESQ, SSNR and STOI they have one convention.
ESTOI is pystoi's extended mode after the same MATLAB-style resampling to 10 kHz as STOI; SI-SDR is
the formula of the paper (``si_sdr``), capped at +-SI_SDR_MAX_DB so a perfect match stays finite.

SI-SIR and SI-SAR split the SI-SDR residual into interference and artefacts, the decomposition
SGMSE+'s evaluation code reports (sp-uhh/sgmse, ``energy_ratios``; here ``si_sir_sar``). They need
the noisy input as well (the interference is noisy - clean), so they are computed only where it is
given (NOISY_METRICS); with it, every other metric is unchanged.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy.signal import firls, resample_poly
from scipy.signal.windows import kaiser

from effifusion.core.errors import AudioError, ConfigError, DataError, EffiFusionError, say
from effifusion.core.files import atomic_path, check_writable_dir
from effifusion.core.parallel import single_thread_worker
from effifusion.dsp.audio import SILENCE_PEAK, read_wav
from effifusion.metrics.pesq import PESQ_SAMPLE_RATE, pesq_wb

METRICS = ("pesq", "csig", "cbak", "covl", "ssnr", "stoi", "estoi", "si_sdr", "si_sir", "si_sar")
NOISY_METRICS = ("si_sir", "si_sar")  # need the noisy input too (interference = noisy - clean)
COMPOSITES = ("csig", "cbak", "covl")  # the measures whose value depends on the convention
CONVENTIONS = ("matlab", "published")
DEFAULT_CONVENTION = "matlab"
CONVENTION_NOTES = {
    "matlab": "matlab (Loizou compute_metrics, int16 scale)",
    "published": "CMGAN/MP-SENet Python port on float input",
}
LISTED_NAMES = 5               # file names quoted in a one-line message about missing files
MIN_DURATION_S = 0.25          # PESQ needs at least a quarter second of speech
MAX_TRIM_SAMPLES = 1600        # length mismatch trimmed silently up to this (0.1 s at 16 kHz) ...
MAX_TRIM_FRACTION = 0.01       # ... or up to 1 % of the longer signal
STOI_SAMPLE_RATE = 10_000
ESTOI_DITHER_SEED = 0          # pystoi's ESTOI dithers with numpy's global generator: seeded, then restored
SI_SDR_MAX_DB = 100.0          # |SI-SDR| capped here: a perfect match is +100 dB, not inf (see si_sdr)
SI_ZERO_ENERGY = 1e-20         # SI-SIR/SAR: a part with less of the output's energy counts as absent

# composite.m constants
FRAME_MS = 30                  # 30 ms frames, hop a quarter frame
BEST_FRACTION = 0.95           # LLR and WSS average the best 95 % of frames
SSNR_MIN_DB, SSNR_MAX_DB = -10.0, 35.0
EPS = float(np.finfo(np.float64).eps)
WSS_K_MAX, WSS_K_LOC_MAX = 20.0, 1.0
WSS_ENERGY_FLOOR = 1e-10
# Factor on the band energies of [-1, 1] frames before the floor: the port's WSS divides each frame
# by 32768 (meant for int16 input), which on float input scales energies by 2**-30 (exactly).
_WSS_POWER_SCALE = {"matlab": 1.0, "published": 1.0 / 32768.0 ** 2}
CRITICAL_BAND_CENTRES_HZ = np.array([
    50.0, 120.0, 190.0, 260.0, 330.0, 400.0, 470.0, 540.0, 617.372, 703.378, 798.717, 904.128, 1020.38,
    1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08, 2446.71, 2701.97, 2978.04, 3276.17,
    3597.63,
])
CRITICAL_BAND_WIDTHS_HZ = np.array([
    70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 70.0, 77.3724, 86.0056, 95.3398, 105.411, 116.256, 127.914,
    140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631, 255.255, 276.072, 298.126, 321.465,
    346.136,
])


# ---------------------------------------------------------------------------------------------
# PESQ


# ---------------------------------------------------------------------------------------------
# Loizou's composite measures (composite.m)


def _frame_geometry(sr: int) -> tuple[int, int]:
    win = int(round(FRAME_MS * sr / 1000))
    return win, win // 4


def _hann_frames(x: np.ndarray, sr: int) -> np.ndarray:
    """[n_frames, win] Hann-windowed frames; composite.m's count floor((len - win) / hop) drops the last."""
    win, hop = _frame_geometry(sr)
    n_frames = (len(x) - win) // hop
    if n_frames < 1:
        raise AudioError(f"signals of {len(x)} samples are shorter than one {FRAME_MS} ms analysis frame")
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[: n_frames * hop : hop]
    window = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(1, win + 1) / (win + 1)))  # composite.m's Hann
    return frames * window


def _mean_of_best(distortion: np.ndarray) -> float:
    """Mean of the smallest 95 % (composite.m drops the worst 5 % of frames)."""
    ordered = np.sort(distortion)
    return float(np.mean(ordered[: int(round(ordered.size * BEST_FRACTION))]))


def _ssnr(c: np.ndarray, e: np.ndarray) -> np.ndarray:
    signal = np.sum(c ** 2, axis=1)
    noise = np.sum((c - e) ** 2, axis=1)
    return np.clip(10.0 * np.log10(signal / (noise + EPS) + EPS), SSNR_MIN_DB, SSNR_MAX_DB)


def _autocorrelation(frames: np.ndarray, order: int) -> np.ndarray:
    n = frames.shape[1]
    lags = [np.einsum("ij,ij->i", frames[:, : n - k], frames[:, k:]) for k in range(order + 1)]
    return np.stack(lags, axis=1)


def _levinson(r: np.ndarray) -> np.ndarray:
    """LPC polynomials [1, -a1, ..., -ap] per row of autocorrelations [n, p + 1] (Levinson-Durbin).

    An all-zero frame has no prediction error to divide by; its reflection coefficients stay 0
    (a flat spectrum) instead of turning into NaN.
    """
    n, p1 = r.shape
    order = p1 - 1
    a = np.zeros((n, order))
    err = r[:, 0].copy()
    for i in range(order):
        acc = r[:, i + 1] - np.einsum("ij,ij->i", a[:, :i], r[:, i:0:-1])
        k = np.divide(acc, err, out=np.zeros(n), where=err > 0)
        if i:
            a[:, :i] = a[:, :i] - k[:, None] * a[:, i - 1 :: -1]
        a[:, i] = k
        err = (1.0 - k * k) * err
    return np.concatenate([np.ones((n, 1)), -a], axis=1)


def _llr(c: np.ndarray, e: np.ndarray, sr: int) -> np.ndarray:
    order = 10 if sr < 10_000 else 16
    r_clean, r_enh = _autocorrelation(c, order), _autocorrelation(e, order)
    a_clean, a_enh = _levinson(r_clean), _levinson(r_enh)
    lag = np.abs(np.subtract.outer(np.arange(order + 1), np.arange(order + 1)))
    toeplitz = r_clean[:, lag]
    numerator = np.einsum("fi,fij,fj->f", a_enh, toeplitz, a_enh)
    denominator = np.einsum("fi,fij,fj->f", a_clean, toeplitz, a_clean)
    keep = denominator > 0  # a digitally silent clean frame has no spectrum to compare with
    return np.log(numerator[keep] / denominator[keep])


@lru_cache(maxsize=4)
def _critical_band_filters(sr: int) -> tuple[np.ndarray, int]:
    """Gaussian critical-band filters [25, n_fft / 2] (equal area, cut below -30 dB) and n_fft."""
    win, _ = _frame_geometry(sr)
    n_fft = int(2 ** math.ceil(math.log2(2 * win)))
    half = n_fft // 2
    max_freq = sr / 2
    min_factor = math.exp(-30.0 / (2.0 * 2.303))
    bins = np.arange(half)
    centres = np.floor(CRITICAL_BAND_CENTRES_HZ / max_freq * half)
    widths = CRITICAL_BAND_WIDTHS_HZ / max_freq * half
    norm = np.log(CRITICAL_BAND_WIDTHS_HZ[0]) - np.log(CRITICAL_BAND_WIDTHS_HZ)
    filters = np.exp(-11.0 * ((bins[None, :] - centres[:, None]) / widths[:, None]) ** 2 + norm[:, None])
    filters[filters <= min_factor] = 0.0
    return filters, n_fft


def _nearest_peaks(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """composite.m's peak search per band: rising slope -> walk right, else walk left (vectorised).

    Like composite.m, a rightward walk ends one band before the first falling slope.
    """
    n_bands = slope.shape[1]
    idx = np.arange(n_bands)
    right = np.where(slope <= 0, idx, n_bands)  # first j >= i with slope[j] <= 0, n_bands if none
    right = np.minimum.accumulate(right[:, ::-1], axis=1)[:, ::-1]
    left = np.maximum.accumulate(np.where(slope > 0, idx, -1), axis=1)  # last j <= i with slope[j] > 0
    return np.take_along_axis(energy, np.where(slope > 0, right - 1, left + 1), axis=1)


def _band_power(frames: np.ndarray, sr: int) -> np.ndarray:
    """[n_frames, 25] critical-band energies (power spectrum through the Gaussian filters)."""
    filters, n_fft = _critical_band_filters(sr)
    power = np.abs(np.fft.rfft(frames, n_fft, axis=1)[:, : n_fft // 2]) ** 2
    return power @ filters.T


def _wss_from_bands(b_clean: np.ndarray, b_enh: np.ndarray, convention: str) -> np.ndarray:
    """Per-frame WSS from band energies; ``convention`` sets the energy scale under the 1e-10 floor."""
    scale = _WSS_POWER_SCALE[convention]

    def band_db(bands: np.ndarray) -> np.ndarray:
        return 10.0 * np.log10(np.maximum(bands * scale, WSS_ENERGY_FLOOR))

    def weights(energy: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        low = energy[:, :-1]
        w_max = WSS_K_MAX / (WSS_K_MAX + energy.max(axis=1, keepdims=True) - low)
        w_loc = WSS_K_LOC_MAX / (WSS_K_LOC_MAX + peaks - low)
        return w_max * w_loc

    e_clean, e_enh = band_db(b_clean), band_db(b_enh)
    s_clean, s_enh = np.diff(e_clean, axis=1), np.diff(e_enh, axis=1)
    w_clean = weights(e_clean, _nearest_peaks(e_clean, s_clean))
    w = (w_clean + weights(e_enh, _nearest_peaks(e_enh, s_enh))) / 2.0
    return np.sum(w * (s_clean - s_enh) ** 2, axis=1) / np.sum(w, axis=1)


def _wss(c: np.ndarray, e: np.ndarray, sr: int, convention: str = DEFAULT_CONVENTION) -> np.ndarray:
    return _wss_from_bands(_band_power(c, sr), _band_power(e, sr), convention)


def check_convention(convention: object) -> str:
    """``convention`` if it is one of CONVENTIONS, else ConfigError naming the valid ones."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown metrics convention {convention!r}: use one of "
                          f"{', '.join(CONVENTIONS)} (default {DEFAULT_CONVENTION})")
    return str(convention)


def _check_extra(convention: str, extra_conventions: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    check_convention(convention)
    if isinstance(extra_conventions, str):  # a bare "published" would otherwise iterate its letters
        extra_conventions = (extra_conventions,)
    return tuple(dict.fromkeys(check_convention(c) for c in extra_conventions if c != convention))


def convention_key(metric: str, convention: str) -> str:
    """Name of ``metric`` in ``convention`` where results of both sit side by side: ``csig_published``.

    The MATLAB convention keeps the plain names, and so do PESQ, SSNR, STOI, ESTOI and SI-SDR, which
    have only one.
    """
    return metric if convention == "matlab" or metric not in COMPOSITES else f"{metric}_{convention}"


def ssnr_frames(clean: np.ndarray, enhanced: np.ndarray, sr: int = PESQ_SAMPLE_RATE) -> np.ndarray:
    """Per-frame segmental SNR in dB, each clipped to [-10, 35] (SSNR is their mean)."""
    return _ssnr(_hann_frames(clean, sr), _hann_frames(enhanced, sr))


def llr_frames(clean: np.ndarray, enhanced: np.ndarray, sr: int = PESQ_SAMPLE_RATE) -> np.ndarray:
    """Per-frame LLR log(a_e R_c a_e' / a_c R_c a_c'), LPC order 16; digitally silent clean frames dropped."""
    return _llr(_hann_frames(clean, sr), _hann_frames(enhanced, sr), sr)


def wss_frames(
    clean: np.ndarray, enhanced: np.ndarray, sr: int = PESQ_SAMPLE_RATE, convention: str = DEFAULT_CONVENTION
) -> np.ndarray:
    """Per-frame weighted spectral slope distance (Klatt 1982; normalised by the weights, as composite.m)."""
    check_convention(convention)
    return _wss(_hann_frames(clean, sr), _hann_frames(enhanced, sr), sr, convention)


def composite(
    clean: np.ndarray, enhanced: np.ndarray, pesq: float, sr: int = PESQ_SAMPLE_RATE,
    convention: str = DEFAULT_CONVENTION,
) -> dict[str, float]:
    """CSIG, CBAK, COVL (each clipped to [1, 5]) and SSNR of equal-length signals, given their PESQ.

    ``convention`` "matlab" (Loizou's MATLAB code) or "published" (the CMGAN/MP-SENet Python port
    on float input, see the module docstring); signals are float samples in [-1, 1] either way.
    """
    return composite_conventions(clean, enhanced, pesq, sr, (check_convention(convention),))[convention]


def composite_conventions(
    clean: np.ndarray, enhanced: np.ndarray, pesq: float, sr: int = PESQ_SAMPLE_RATE,
    conventions: tuple[str, ...] = CONVENTIONS,
) -> dict[str, dict[str, float]]:
    """``composite`` in several conventions at once: {convention: {csig, cbak, covl, ssnr}}.

    Frames, spectra, band energies, LLR and SSNR are computed once; each convention only redoes
    the WSS distance from the shared band energies.
    """
    for convention in conventions:
        check_convention(convention)
    c = _hann_frames(np.asarray(clean, dtype=np.float64), sr)
    e = _hann_frames(np.asarray(enhanced, dtype=np.float64), sr)
    llr = _mean_of_best(_llr(c, e, sr))
    ssnr = float(np.mean(_ssnr(c, e)))
    b_clean, b_enh = _band_power(c, sr), _band_power(e, sr)
    out = {}
    for convention in dict.fromkeys(conventions):
        wss = _mean_of_best(_wss_from_bands(b_clean, b_enh, convention))
        csig = 3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss
        cbak = 1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * ssnr
        covl = 1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss
        out[convention] = {"csig": _clip_mos(csig), "cbak": _clip_mos(cbak), "covl": _clip_mos(covl),
                           "ssnr": ssnr}
    return out


def _clip_mos(value: float) -> float:
    return float(min(max(value, 1.0), 5.0))


# ---------------------------------------------------------------------------------------------
# STOI


@lru_cache(maxsize=4)
def _matlab_resample_filter(up: int, down: int) -> np.ndarray:
    """MATLAB resample()'s anti-aliasing FIR: least-squares design times a Kaiser window (beta 5, N 10).

    Taal's reference stoi.m resamples with MATLAB's resample(); pystoi >= 0.4 uses Octave's filter
    instead, which moves short files by up to 0.009 STOI against the published reference values.
    """
    taps = 2 * 10 * max(up, down) + 1
    cutoff = 1.0 / (2 * max(up, down))
    h = firls(taps, [0.0, 2 * cutoff, 2 * cutoff, 1.0], [1.0, 1.0, 0.0, 0.0]) * kaiser(taps, 5.0)
    return h / np.sum(h)  # resample_poly multiplies by ``up`` again


def _resample_for_stoi(clean: np.ndarray, enhanced: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Both signals at 10 kHz, resampled the way the MATLAB reference stoi.m does (resample())."""
    if sr == STOI_SAMPLE_RATE:
        return clean, enhanced
    g = math.gcd(STOI_SAMPLE_RATE, sr)
    up, down = STOI_SAMPLE_RATE // g, sr // g
    h = _matlab_resample_filter(up, down)
    return resample_poly(clean, up, down, window=h), resample_poly(enhanced, up, down, window=h)


def _stoi_at_10k(clean: np.ndarray, enhanced: np.ndarray, extended: bool) -> float:
    """pystoi on 10 kHz signals; AudioError where pystoi would warn and return 1e-5.

    pystoi's ESTOI adds eps * randn dither from numpy's global generator (row_col_normalize): it runs
    here from a fixed seed (ESTOI_DITHER_SEED), so a pair always gets the same value to the last bit,
    and the caller's global random state is put back afterwards, as if it had not been used.
    """
    from pystoi import stoi

    state = np.random.get_state() if extended else None
    try:
        if extended:
            np.random.seed(ESTOI_DITHER_SEED)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(stoi(clean, enhanced, STOI_SAMPLE_RATE, extended=extended))
    finally:
        if state is not None:
            np.random.set_state(state)
    if any("Not enough STFT frames" in str(w.message) for w in caught):  # pystoi then returns 1e-5
        name = "ESTOI" if extended else "STOI"
        raise AudioError(f"too little active speech for {name}: it needs 30 frames (about 0.4 s) within "
                         "40 dB of the clean signal's loudest frame")
    return value


def stoi_score(
    clean: np.ndarray, enhanced: np.ndarray, sr: int = PESQ_SAMPLE_RATE, extended: bool = False
) -> float:
    """STOI (Taal et al. 2011), or with ``extended`` ESTOI (Jensen & Taal 2016), via pystoi after
    resampling to 10 kHz the way the MATLAB reference does."""
    return _stoi_at_10k(*_resample_for_stoi(clean, enhanced, sr), extended=extended)


# ---------------------------------------------------------------------------------------------
# SI-SDR


def si_sdr(
    clean: np.ndarray, enhanced: np.ndarray, names: tuple[str, str] = ("clean", "enhanced")
) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019) of ``enhanced`` against ``clean`` (equal lengths).

    Both signals are made zero-mean; the target is the projection of the enhanced signal on the clean
    one, alpha * clean with alpha = <e, c> / <c, c>, the noise the rest, and SI-SDR = 10 log10(|target|^2 /
    |noise|^2). The ratio is limited to 10^(+-SI_SDR_MAX_DB / 10), a floor relative to the signals' own
    energy (so the value stays scale-invariant): a perfect match (noise 0, e.g. ``enhanced = 2 * clean``)
    gives +100 dB and an output orthogonal to the reference -100 dB, finite values a mean can use.
    A constant signal (nothing left after removing the mean) raises AudioError naming it by ``names``.
    """
    c = np.asarray(clean, dtype=np.float64)
    e = np.asarray(enhanced, dtype=np.float64)
    for x, name in zip((c, e), names):
        if x.size and np.ptp(x) == 0:
            raise AudioError(f"{name}: is constant (nothing left after removing its mean); "
                             "SI-SDR is undefined")
    c, e = c - np.mean(c), e - np.mean(e)
    alpha = np.dot(e, c) / np.dot(c, c)
    target = alpha * c
    noise = e - target
    t, n = float(np.dot(target, target)), float(np.dot(noise, noise))
    floor = 10.0 ** (-SI_SDR_MAX_DB / 10.0)
    return float(10.0 * np.log10(max(t, floor * n) / max(n, floor * t)))


def si_sdr_components(
    clean: np.ndarray, enhanced: np.ndarray, noisy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s_target, e_noise, e_art) of ``enhanced``: its parts along the clean speech, along the
    interference ``noisy - clean``, and the rest, all three from zero-mean signals (equal lengths).

    s_target = (<e, c> / |c|^2) c and e_noise = (<e, n> / |n|^2) n are separate projections (c and n
    need not be orthogonal), e_art = e - s_target - e_noise. Means are removed first, as ``si_sdr``
    does, so s_target is the one SI-SDR uses and e_noise + e_art is its residual (SGMSE+'s
    ``si_sdr_components`` skips the mean removal: the same values on zero-mean files). Without
    interference (noisy equal to clean up to a constant; an interference at most SI_ZERO_ENERGY of the
    clean energy is rounding noise, no direction to project on) e_noise is zero.
    """
    c, e, y = (np.asarray(x, dtype=np.float64) for x in (clean, enhanced, noisy))
    if not c.shape == e.shape == y.shape or c.ndim != 1:
        raise AudioError(f"SI-SIR/SI-SAR need three 1-D signals of one length, got clean {c.shape}, "
                         f"enhanced {e.shape}, noisy {y.shape}")
    c, e, n = c - np.mean(c), e - np.mean(e), (y - c) - np.mean(y - c)
    target = np.dot(e, c) / np.dot(c, c) * c
    nn = float(np.dot(n, n))
    e_noise = np.dot(e, n) / nn * n if nn > SI_ZERO_ENERGY * np.dot(c, c) else np.zeros_like(e)
    return target, e_noise, e - target - e_noise


def _energy_ratio_db(num: float, den: float, scale: float) -> float:
    """10 log10(num / den) within +-SI_SDR_MAX_DB; an energy at most SI_ZERO_ENERGY * ``scale`` (the
    output's energy, so the rule is scale-invariant) is rounding noise, taken as none: no numerator
    gives the lower cap (also over no denominator), no denominator the upper one."""
    tiny = SI_ZERO_ENERGY * scale
    if num <= tiny:
        return -SI_SDR_MAX_DB
    if den <= tiny:
        return SI_SDR_MAX_DB
    return float(np.clip(10.0 * np.log10(num / den), -SI_SDR_MAX_DB, SI_SDR_MAX_DB))


def si_sir_sar(
    clean: np.ndarray, enhanced: np.ndarray, noisy: np.ndarray,
    names: tuple[str, str] = ("clean", "enhanced"),
) -> tuple[float, float]:
    """(SI-SIR, SI-SAR) in dB of ``enhanced`` against ``clean``, the interference being ``noisy - clean``.

    SI-SIR = 10 log10(|s_target|^2 / |e_noise|^2) (how much of the noise is left), SI-SAR =
    10 log10(|s_target|^2 / |e_art|^2) (what the processing added), from ``si_sdr_components``.
    Both are limited to +-SI_SDR_MAX_DB like SI-SDR and are never NaN or inf (see _energy_ratio_db for
    parts without energy): an output with no noise left gets +100 dB SI-SIR, and the noisy input
    itself, whose only artefacts come from speech and noise not being exactly orthogonal, a high
    SI-SAR (+100 dB when they are). A constant clean or enhanced signal raises AudioError naming it
    by ``names``.
    """
    for x, name in zip((clean, enhanced), names):
        x = np.asarray(x)
        if x.size and np.ptp(x) == 0:
            raise AudioError(f"{name}: is constant (nothing left after removing its mean); "
                             "SI-SIR and SI-SAR are undefined")
    target, e_noise, e_art = si_sdr_components(clean, enhanced, noisy)
    output = target + e_noise + e_art  # the zero-mean enhanced signal
    energy, t = float(np.dot(output, output)), float(np.dot(target, target))
    return (_energy_ratio_db(t, float(np.dot(e_noise, e_noise)), energy),
            _energy_ratio_db(t, float(np.dot(e_art, e_art)), energy))


# ---------------------------------------------------------------------------------------------
# one pair


def _as_float_pair(
    clean: np.ndarray, enhanced: np.ndarray, names: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values, trim a small length mismatch; float64 copies."""
    out = []
    for x, name in zip((clean, enhanced), names):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise AudioError(f"{name}: expected a 1-D mono signal, got shape {x.shape}")
        if x.size == 0:
            raise AudioError(f"{name}: contains no samples")
        if not np.all(np.isfinite(x)):
            raise AudioError(f"{name}: contains NaN or infinite samples")
        out.append(x)
    c, e = out
    if len(c) != len(e):
        diff, longer = abs(len(c) - len(e)), max(len(c), len(e))
        if diff > MAX_TRIM_SAMPLES and diff > MAX_TRIM_FRACTION * longer:
            raise AudioError(f"{names[0]} has {len(c)} samples but {names[1]} has {len(e)}: they differ "
                             f"by more than {MAX_TRIM_SAMPLES} samples and 1 % (too much to trim)")
        n = min(len(c), len(e))
        c, e = c[:n], e[:n]
    return c, e


def score_pair(
    clean: np.ndarray, enhanced: np.ndarray, sr: int = PESQ_SAMPLE_RATE,
    names: tuple[str, ...] = ("clean", "enhanced"),
    convention: str = DEFAULT_CONVENTION,
    extra_conventions: tuple[str, ...] = (),
    noisy: np.ndarray | None = None,
) -> dict[str, float]:
    """PESQ (wide-band), CSIG, CBAK, COVL, SSNR, STOI, ESTOI and SI-SDR of ``enhanced`` against ``clean``,
    and SI-SIR and SI-SAR when the ``noisy`` input is given.

    Both must be finite 1-D signals at 16 kHz. Lengths that differ by at most 1600 samples or 1 %
    (codec and resampler padding) are trimmed to the shorter; larger differences, a silent or constant
    signal or less than 0.25 s raise AudioError, whose message calls the two signals by ``names``.
    SI-SDR is in dB, limited to +-SI_SDR_MAX_DB (a perfect match: +100 dB, see si_sdr).

    ``noisy`` (called ``names[2]``, default "noisy") is checked and trimmed like ``enhanced``, against
    ``clean``; SI-SIR and SI-SAR (dB, see si_sir_sar) use the three on their common length, the other
    metrics are what they are without it. Without ``noisy`` the row has no si_sir / si_sar keys.

    CSIG, CBAK and COVL are in ``convention`` ("matlab" or "published"); each of
    ``extra_conventions`` adds them as ``csig_<convention>``, ... from the same frames.
    """
    extra = _check_extra(convention, extra_conventions)
    if sr != PESQ_SAMPLE_RATE:
        raise AudioError(f"{names[1]}: metrics need {PESQ_SAMPLE_RATE} Hz audio (wide-band PESQ), got {sr} "
                         "Hz: resample first (effifusion.dsp.audio.resample)")
    c, e = _as_float_pair(clean, enhanced, names[:2])
    if noisy is not None:
        y = _as_float_pair(c, noisy, (names[0], names[2] if len(names) > 2 else "noisy"))[1]
    if len(c) < MIN_DURATION_S * sr:
        raise AudioError(f"{names[0]}: {len(c)} samples ({len(c) / sr:.3f} s) are too short to score; "
                         f"PESQ needs at least {MIN_DURATION_S} s of speech")
    for x, name in ((c, names[0]), (e, names[1])):
        if float(np.max(np.abs(x))) < SILENCE_PEAK:
            raise AudioError(f"{name}: is silent (peak below {SILENCE_PEAK:g}); PESQ is undefined")
    sdr = si_sdr(c, e, names[:2])  # first: it names a constant (DC-only) signal, which passes the peak check
    ratios = {}
    if noisy is not None:
        k = min(len(c), len(y))
        ratios = dict(zip(NOISY_METRICS, si_sir_sar(c[:k], e[:k], y[:k], names[:2])))
    try:
        pesq = pesq_wb(c, e, sr)
        c10, e10 = _resample_for_stoi(c, e, sr)  # once, for STOI and ESTOI
        stoi = _stoi_at_10k(c10, e10, extended=False)
        estoi = _stoi_at_10k(c10, e10, extended=True)
    except AudioError as exc:
        raise AudioError(f"{names[1]} vs {names[0]}: {exc}") from None
    measures = composite_conventions(c, e, pesq, sr, (convention, *extra))
    scores = {"pesq": pesq, **measures[convention], "stoi": stoi, "estoi": estoi, "si_sdr": sdr, **ratios}
    out = {k: scores[k] for k in METRICS if k in scores}
    for other in extra:
        out.update({f"{m}_{other}": measures[other][m] for m in COMPOSITES})
    return out


def score_keys(
    convention: str = DEFAULT_CONVENTION, extra_conventions: tuple[str, ...] = (), noisy: bool = False
) -> list[str]:
    """The metric keys of a score_pair / score_files row for these arguments (``noisy``: the noisy
    input given, so SI-SIR and SI-SAR too), in order."""
    extra = _check_extra(convention, extra_conventions)
    return [*(m for m in METRICS if noisy or m not in NOISY_METRICS),
            *(f"{m}_{other}" for other in extra for m in COMPOSITES)]


# ---------------------------------------------------------------------------------------------
# many files


def _score_file(job: tuple[str, str, str, str | None, str, tuple[str, ...]]) -> dict:
    """One row for score_files; failures become an ``error`` field instead of an exception."""
    utt, clean_path, enhanced_path, noisy_path, convention, extra = job
    try:
        clean, sr = read_wav(clean_path)
        signals = {}
        for path in (enhanced_path, noisy_path):
            if path is not None and path not in signals:
                signals[path], sr_other = read_wav(path)
                if sr_other != sr:
                    raise AudioError(f"{path}: sample rate is {sr_other} Hz but its clean reference "
                                     f"{clean_path} is {sr} Hz")
        noisy = signals[noisy_path] if noisy_path is not None else None
        return {"utt": utt, **score_pair(clean, signals[enhanced_path], sr,
                                         names=(clean_path, enhanced_path, noisy_path or "noisy"),
                                         convention=convention, extra_conventions=extra, noisy=noisy)}
    except EffiFusionError as exc:
        error = str(exc)
    except Exception as exc:  # keep the other files' results; reported with the failures at the end
        error = f"{enhanced_path}: {type(exc).__name__}: {exc}"
    keys = score_keys(convention, extra, noisy_path is not None)
    return {"utt": utt, **{k: float("nan") for k in keys}, "error": error}


def score_files(
    pairs: list[tuple[str, Path, Path]] | list[tuple[str, Path, Path, Path]],
    workers: int | None = None,
    progress: bool = True,
    desc: str = "scoring",
    allow_errors: bool = False,
    convention: str = DEFAULT_CONVENTION,
    extra_conventions: tuple[str, ...] = (),
) -> list[dict]:
    """Score (utt, clean WAV, enhanced WAV) triples, or (utt, clean, enhanced, noisy WAV) quadruples
    for SI-SIR and SI-SAR too, in worker processes; rows in input order.

    Each row is {"utt", "pesq", "csig", "cbak", "covl", "ssnr", "stoi", "estoi", "si_sdr"}, then "si_sir",
    "si_sar" for quadruples, the composites in ``convention``, plus "csig_<c>", "cbak_<c>", "covl_<c>"
    for each of ``extra_conventions`` (see score_pair); a file that cannot be scored gets NaN metrics
    and an "error" message. Unless ``allow_errors``, AudioError lists those files after all others
    are done. Workers are spawned (safe beside torch) with one thread each.
    """
    extra = _check_extra(convention, extra_conventions)
    sizes = {len(p) for p in pairs}
    if not sizes <= {3, 4} or len(sizes) > 1:
        raise ConfigError(f"score_files: every item must be (utt, clean, enhanced) or (utt, clean, enhanced, "
                          f"noisy), all of one kind; got items of {sorted(sizes)} fields")
    jobs = [(str(p[0]), str(p[1]), str(p[2]), str(p[3]) if len(p) == 4 else None, convention, extra)
            for p in pairs]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = dict(total=len(jobs), desc=desc, unit="file", disable=not progress)
    from tqdm import tqdm

    if workers <= 1:
        rows = [_score_file(job) for job in tqdm(jobs, **bar)]
    else:
        chunksize = max(1, min(16, math.ceil(len(jobs) / (4 * workers))))
        spawn = get_context("spawn")  # fork after torch/OpenMP started threads can deadlock
        with ProcessPoolExecutor(workers, mp_context=spawn, initializer=single_thread_worker) as pool:
            rows = list(tqdm(pool.map(_score_file, jobs, chunksize=chunksize), **bar))
    if not allow_errors:
        _raise_failures(rows)
    return rows


def _raise_failures(rows: list[dict], note: str = "") -> None:
    failed = [row for row in rows if "error" in row]
    if failed:
        listed = "\n".join(f"  {row['utt']}: {row['error']}" for row in failed[:10])
        more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
        raise AudioError(f"{len(failed)} of {len(rows)} files could not be scored{note}:\n{listed}{more}")


def _wav_names(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".wav" and p.is_file()}


def write_rows_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Per-file rows as CSV, written atomically; an ``error`` column only when some file failed.

    Columns: utt, then the rows' metric keys in first-seen order, then error.
    """
    keys = dict.fromkeys(k for row in rows for k in row if k not in ("utt", "error"))
    columns = ["utt", *keys] + (["error"] if any("error" in row for row in rows) else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def score_dirs(
    clean_dir: str | os.PathLike,
    enhanced_dir: str | os.PathLike,
    out_csv: str | os.PathLike | None = None,
    workers: int | None = None,
    convention: str = DEFAULT_CONVENTION,
    allow_missing: bool = False,
    noisy_dir: str | os.PathLike | None = None,
) -> dict:
    """Score every enhanced WAV against the clean WAV of the same file name (``effifusion score``);
    with ``noisy_dir``, the noisy inputs of the same names, SI-SIR and SI-SAR too.

    A clean reference without an enhanced file is a DataError naming how many and the first few
    (a mean over a subset would pass for the whole set), unless ``allow_missing``: then a warning
    line and the means over the files present. An enhanced file without a clean reference is left
    out with a warning line. A scored file without a noisy input in ``noisy_dir`` is a DataError
    (the SI-SIR and SI-SAR means would cover other files than the rest). ``out_csv`` is checked
    writable before any scoring.

    Returns {"n", "convention", "convention_note" (what it means), "means" (per metric),
    "unmatched_enhanced" (names without a clean reference), "missing_enhanced" (count of clean files
    without an output)}; per-file rows go to ``out_csv`` when given (written also when some files
    fail, before the AudioError that lists them). Composites in the "published" convention are named
    csig_published, cbak_published, covl_published in the means and the CSV (convention_key), so
    they cannot pass for MATLAB ones.
    """
    check_convention(convention)
    if out_csv is not None:
        out_csv = _check_out_csv(Path(out_csv))
    clean_dir, enhanced_dir = Path(clean_dir), Path(enhanced_dir)
    clean, enhanced = _wav_names(clean_dir), _wav_names(enhanced_dir)
    common = sorted(clean.keys() & enhanced.keys())
    if not common:
        raise DataError(f"no WAV file names in common between {enhanced_dir} ({len(enhanced)} WAVs) and the "
                        f"clean references in {clean_dir} ({len(clean)} WAVs)")
    missing, unmatched = sorted(clean.keys() - enhanced.keys()), sorted(enhanced.keys() - clean.keys())
    if missing:
        text = (f"{len(missing)} of {len(clean)} clean references in {clean_dir} have no enhanced file in "
                f"{enhanced_dir} ({_names(missing)})")
        if not allow_missing:
            raise DataError(f"{text}; pass --allow-missing to score the {len(common)} present")
        say("score", "warning", f"{text}; means are over the {len(common)} present")
    if unmatched:
        say("score", "warning", f"{len(unmatched)} enhanced file(s) in {enhanced_dir} have no clean reference in "
                                f"{clean_dir} ({_names(unmatched)}); left out")
    pairs = [(Path(name).stem, clean[name], enhanced[name]) for name in common]
    if noisy_dir is not None:
        noisy_dir = Path(noisy_dir)
        noisy = _wav_names(noisy_dir)
        lacking = [name for name in common if name not in noisy]
        if lacking:
            raise DataError(f"{len(lacking)} of {len(common)} files to score have no noisy input in "
                            f"{noisy_dir} ({_names(lacking)}); SI-SIR and SI-SAR need one for each "
                            "(or leave out --noisy)")
        pairs = [(utt, c, e, noisy[name]) for (utt, c, e), name in zip(pairs, common)]
    rows = score_files(pairs, workers=workers, allow_errors=True, convention=convention)
    rows = [{convention_key(k, convention) if k in METRICS else k: v for k, v in row.items()} for row in rows]
    keys = [convention_key(m, convention) for m in score_keys(convention, (), noisy_dir is not None)]
    if out_csv is not None:
        try:
            write_rows_csv(out_csv, rows)
        except OSError as exc:  # checked before scoring; the disk can still fill up meanwhile
            raise DataError(f"{out_csv}: cannot be written ({exc.strerror or exc})") from None
    _raise_failures(rows, f" (rows with the errors in {out_csv})" if out_csv is not None else "")
    return {
        "n": len(rows),
        "convention": convention,
        "convention_note": f"csig/cbak/covl: {CONVENTION_NOTES[convention]}",
        "means": {k: float(np.mean([row[k] for row in rows])) for k in keys},
        "unmatched_enhanced": unmatched,
        "missing_enhanced": len(missing),
    }


def _names(names: list[str]) -> str:
    return ", ".join(names[:LISTED_NAMES]) + (", ..." if len(names) > LISTED_NAMES else "")


def _check_out_csv(path: Path) -> Path:
    """DataError naming ``path`` when the CSV could not be written, checked before minutes of scoring."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder; --out takes a CSV file path")
    check_writable_dir(path.parent, f"folder of --out {path.name}")
    return path
