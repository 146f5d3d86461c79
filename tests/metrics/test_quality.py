"""Metrics against the reference values in ../shared/fixtures, plus the error paths users hit."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from scipy.linalg import solve_toeplitz

from effifusion.cli import main
from effifusion.core.errors import AudioError, ConfigError, DataError
from effifusion.metrics import quality as metrics
from effifusion.metrics.pesq import pesq_or_nan
from helpers import fixtures_or_skip

TSV_COLUMNS = {  # the fixtures have no ESTOI or SI-SDR: those are checked against pystoi and the formula
    "PESQ_wb": "pesq", "CSIG": "csig", "CBAK": "cbak", "COVL": "covl", "SSNR": "ssnr", "STOI": "stoi",
}
TOLERANCE = {"pesq": 1e-3, "csig": 1e-3, "cbak": 1e-3, "covl": 1e-3, "ssnr": 1e-3, "stoi": 5e-3}
SHORT_UTTS = ["p232_052", "p232_170", "p257_054"]  # the three shortest fixture files (~2.2 s)


def _read(path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float64")
    assert sr == 16000
    return audio


@pytest.fixture(scope="module")
def voicebank():
    return fixtures_or_skip("voicebank_test_16k")


@pytest.fixture(scope="module")
def scored(voicebank):
    """Both fixture sets scored once, in parallel, in both conventions: {(folder, utt): row}."""
    pairs, keys = [], []
    for folder in ("noisy", "enhanced_cmgan"):
        for path in sorted((voicebank / folder).glob("*.wav")):
            pairs.append((path.stem, voicebank / "clean" / path.name, path))
            keys.append((folder, path.stem))
    rows = metrics.score_files(pairs, workers=2, progress=False, extra_conventions=("published",))
    assert [row["utt"] for row in rows] == [utt for _, utt in keys]  # input order kept
    return dict(zip(keys, rows))


@pytest.mark.parametrize("folder,tsv,convention", [
    ("noisy", "reference_metrics_noisy.tsv", "matlab"),
    ("enhanced_cmgan", "reference_metrics_enhanced_cmgan.tsv", "matlab"),
    ("noisy", "reference_metrics_noisy_published_script.tsv", "published"),
    ("enhanced_cmgan", "reference_metrics_enhanced_cmgan_published_script.tsv", "published"),
])
def test_every_file_matches_reference(scored, voicebank, folder, tsv, convention):
    with open(voicebank / tsv) as f:
        reference = list(csv.DictReader(f, delimiter="\t"))
    assert len(reference) == 25
    worst = {key: (0.0, "") for key in TOLERANCE}
    for ref in reference:
        row = scored[(folder, ref["utt"])]
        for column, key in TSV_COLUMNS.items():
            name = f"{key}_{convention}" if convention != "matlab" and key in metrics.COMPOSITES else key
            err = abs(row[name] - float(ref[column]))
            if err > worst[key][0]:
                worst[key] = (err, ref["utt"])
    too_far = {k: v for k, v in worst.items() if v[0] > TOLERANCE[k]}
    assert not too_far, f"max abs errors beyond tolerance: {too_far}"


def test_pesq_sample_is_exact():
    folder = fixtures_or_skip("pesq_sample")
    clean, noisy = _read(folder / "speech.wav"), _read(folder / "speech_bab_0dB.wav")
    assert metrics.pesq_wb(clean, noisy) == pytest.approx(1.0832337141036987, abs=1e-6)
    assert pesq_or_nan(clean.astype(np.float32), noisy.astype(np.float32)) == pytest.approx(
        1.0832337141036987, abs=1e-6)


def test_identical_signals_get_top_scores(voicebank):
    clean = _read(voicebank / "clean" / "p232_052.wav")
    scores = metrics.score_pair(clean, clean.copy())
    plain = [m for m in metrics.METRICS if m not in metrics.NOISY_METRICS]  # no noisy input given
    assert list(scores) == metrics.score_keys() == plain
    assert scores["pesq"] == pytest.approx(4.644, abs=0.01)
    assert scores["ssnr"] == 35.0
    assert scores["csig"] == scores["cbak"] == scores["covl"] == 5.0
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["si_sdr"] == metrics.SI_SDR_MAX_DB  # a perfect match: the cap, not inf


def test_small_length_mismatch_is_trimmed(voicebank):
    clean = _read(voicebank / "clean" / "p232_052.wav")
    noisy = _read(voicebank / "noisy" / "p232_052.wav")
    padded = np.concatenate([noisy, np.zeros(800)])  # codec-style tail padding
    assert metrics.score_pair(clean, padded) == metrics.score_pair(clean, noisy)


@pytest.fixture(scope="module")
def speech(voicebank):
    return _read(voicebank / "clean" / "p232_052.wav")


@pytest.mark.parametrize("make,message", [
    (lambda x: (np.zeros_like(x), x), "clean: is silent"),
    (lambda x: (x, np.zeros_like(x)), "enhanced: is silent"),
    (lambda x: (x[:3000], x[:3000]), "too short"),
    (lambda x: (x, x[:20000]), f"clean has {35184} samples but enhanced has 20000"),
    (lambda x: (x, np.where(np.arange(x.size) == 100, np.nan, x)), "enhanced: contains NaN"),
    (lambda x: (np.stack([x, x], axis=1), x), "1-D"),
])
def test_bad_inputs_raise_clear_errors(speech, make, message):
    clean, enhanced = make(speech)
    with pytest.raises(AudioError, match=message):
        metrics.score_pair(clean, enhanced)
    assert math.isnan(pesq_or_nan(clean, enhanced))


def test_other_sample_rates_are_refused(speech):
    with pytest.raises(AudioError, match="resample"):
        metrics.score_pair(speech, speech, sr=48000)
    assert math.isnan(pesq_or_nan(speech, speech, sr=48000))


def test_no_speech_for_stoi_is_an_error_not_a_number(speech):
    # 0.3 s passes PESQ's minimum but gives STOI fewer than 30 frames: pystoi alone would return 1e-5
    with pytest.raises(AudioError, match="STOI"):
        metrics.score_pair(speech[8000:12800], speech[8000:12800])


def _pystoi_at_10k(clean, enhanced, extended):
    """pystoi called directly on the pair, after the same MATLAB-style resampling to 10 kHz."""
    from pystoi import stoi
    from scipy.signal import resample_poly

    h = metrics._matlab_resample_filter(5, 8)
    c, e = (resample_poly(x, 5, 8, window=h) for x in (clean, enhanced))
    return stoi(c, e, metrics.STOI_SAMPLE_RATE, extended=extended)


@pytest.mark.parametrize("folder", ["noisy", "enhanced_cmgan"])
def test_estoi_is_pystoi_extended_mode(scored, voicebank, folder):
    """ESTOI on real pairs = pystoi's extended mode on the same 10 kHz signals, and close to pystoi's own
    resampling from 16 kHz (Octave's filter instead of MATLAB's moves short files by < 0.01)."""
    from pystoi import stoi

    for utt in SHORT_UTTS:
        clean, enhanced = _read(voicebank / "clean" / f"{utt}.wav"), _read(voicebank / folder / f"{utt}.wav")
        row = scored[(folder, utt)]
        assert row["estoi"] == pytest.approx(_pystoi_at_10k(clean, enhanced, extended=True), abs=1e-12)
        assert row["stoi"] == pytest.approx(_pystoi_at_10k(clean, enhanced, extended=False), abs=1e-12)
        assert row["estoi"] == pytest.approx(stoi(clean, enhanced, 16000, extended=True), abs=0.01)
        assert metrics.stoi_score(clean, enhanced, extended=True) == pytest.approx(row["estoi"], abs=1e-12)
        assert metrics.stoi_score(clean, enhanced) == pytest.approx(row["stoi"], abs=1e-12)


def test_estoi_on_a_constructed_pair():
    """Synthetic speech plus white noise: ESTOI falls with the SNR and matches pystoi directly."""
    from helpers import synthetic_speech

    clean = synthetic_speech(2.0, seed=3).astype(np.float64)
    noise = np.random.default_rng(3).standard_normal(clean.size)
    values = []
    for snr_db in (20.0, 0.0):
        enhanced = clean + noise * np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
        value = metrics.stoi_score(clean, enhanced, extended=True)
        assert value == pytest.approx(_pystoi_at_10k(clean, enhanced, extended=True), abs=1e-12)
        values.append(value)
    assert 1.0 > values[0] > values[1] > 0.0


def test_estoi_is_deterministic_and_leaves_the_global_random_state_alone(speech, voicebank):
    noisy = _read(voicebank / "noisy" / "p232_052.wav")
    np.random.seed(123)
    expected_draw = np.random.standard_normal(3)
    np.random.seed(123)
    values = {metrics.stoi_score(speech, noisy, extended=True) for _ in range(3)}
    assert len(values) == 1  # pystoi's eps dither comes from a fixed seed
    np.testing.assert_array_equal(np.random.standard_normal(3), expected_draw)


def test_no_speech_for_estoi_is_an_error_not_a_number(speech):
    with pytest.raises(AudioError, match="too little active speech for ESTOI"):
        metrics.stoi_score(speech[8000:12800], speech[8000:12800], extended=True)


def _orthogonal_noise(clean: np.ndarray, ratio_db: float, seed: int = 0) -> np.ndarray:
    """Zero-mean noise orthogonal to the zero-mean ``clean``, ``ratio_db`` below it in energy."""
    c = clean - clean.mean()
    n = np.random.default_rng(seed).standard_normal(clean.size)
    n -= n.mean()
    n -= (n @ c) / (c @ c) * c
    return n * np.sqrt((c @ c) / (n @ n) / 10 ** (ratio_db / 10))


def test_si_sdr_known_values(speech):
    c = speech
    assert metrics.si_sdr(c, c) == metrics.SI_SDR_MAX_DB
    assert metrics.si_sdr(c, 2 * c) == metrics.SI_SDR_MAX_DB  # scaled copy: no noise at all, capped
    assert metrics.si_sdr(c, -0.3 * c) == metrics.SI_SDR_MAX_DB  # the sign is a scale too
    n = _orthogonal_noise(c, 20.0)  # |n|^2 = |c|^2 / 100
    assert metrics.si_sdr(c, c + n) == pytest.approx(20.0, abs=1e-9)
    assert metrics.si_sdr(c, c + _orthogonal_noise(c, -5.0, seed=1)) == pytest.approx(-5.0, abs=1e-9)
    assert metrics.si_sdr(c, n) == -metrics.SI_SDR_MAX_DB  # nothing of the reference: the lower cap
    # a noise that is part target: e = c + 0.5 c + n -> target 1.5 c, SI-SDR 20 dB + 20 log10(1.5)
    assert metrics.si_sdr(c, 1.5 * c + n) == pytest.approx(20.0 + 20 * np.log10(1.5), abs=1e-9)


def test_si_sdr_is_scale_and_offset_invariant(speech):
    c, n = speech, _orthogonal_noise(speech, 7.0, seed=2)
    reference = metrics.si_sdr(c, c + n)
    assert reference == pytest.approx(7.0, abs=1e-9)
    for scale in (1e-3, 0.5, 3.0, -2.0):
        assert metrics.si_sdr(c, scale * (c + n)) == pytest.approx(reference, abs=1e-9)
        assert metrics.si_sdr(c * abs(scale), c + n) == pytest.approx(reference, abs=1e-9)
    assert metrics.si_sdr(c + 0.25, c + n - 0.1) == pytest.approx(reference, abs=1e-9)  # DC removed
    assert metrics.si_sdr(1e-6 * c, 1e-6 * c) == metrics.SI_SDR_MAX_DB  # the cap is relative, not absolute


def test_si_sdr_of_a_constant_signal_is_one_clear_error(speech):
    with pytest.raises(AudioError) as exc:
        metrics.si_sdr(np.full(1000, 0.2), speech[:1000])
    assert str(exc.value) == "clean: is constant (nothing left after removing its mean); SI-SDR is undefined"
    assert "\n" not in str(exc.value)
    with pytest.raises(AudioError, match="^out.wav: is constant"):
        metrics.score_pair(speech, np.full_like(speech, -0.5), names=("ref.wav", "out.wav"))


def test_score_pair_si_sdr_is_the_formula(speech, voicebank):
    noisy = _read(voicebank / "noisy" / "p232_052.wav")
    c, e = speech - speech.mean(), noisy - noisy.mean()
    target = (e @ c) / (c @ c) * c
    expected = 10 * np.log10((target @ target) / ((e - target) @ (e - target)))
    assert metrics.score_pair(speech, noisy)["si_sdr"] == pytest.approx(expected, abs=1e-9)


def _orthogonal_parts(size: int, energies_db: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Zero-mean signals, mutually orthogonal (Gram-Schmidt), with these energies in dB."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    for db in energies_db:
        x = rng.standard_normal(size)
        x -= x.mean()
        for q in parts:
            x -= (x @ q) / (q @ q) * q
        parts.append(x * np.sqrt(10 ** (db / 10) / (x @ x)))
    return parts


def _energy_ratios_reference(s_hat, s, n):
    """SGMSE+'s energy_ratios written out again (no mean removal): SI-SDR, SI-SIR, SI-SAR in dB."""
    s_target = (s_hat @ s) / (s @ s) * s
    e_noise = (s_hat @ n) / (n @ n) * n
    e_art = s_hat - s_target - e_noise
    db = lambda err: 10 * np.log10((s_target @ s_target) / (err @ err))  # noqa: E731
    return db(e_noise + e_art), db(e_noise), db(e_art)


@pytest.mark.parametrize("a,b,c", [(1.0, 1.0, 0.1), (0.7, 0.05, 0.02), (-2.0, 0.3, 1.5), (1e-4, 1e-5, 3e-6)])
def test_si_sir_sar_closed_form(a, b, c):
    """e = a s + b n + c r with s, n, r orthogonal: s_target = a s, e_noise = b n, e_art = c r exactly."""
    s, n, r = _orthogonal_parts(16000, (0.0, -3.0, -10.0))
    noisy, enhanced = s + n, a * s + b * n + c * r
    sir, sar = metrics.si_sir_sar(s, enhanced, noisy)
    ts, tn, tr = a * a * (s @ s), b * b * (n @ n), c * c * (r @ r)
    assert sir == pytest.approx(10 * np.log10(ts / tn), abs=1e-9)  # = 3 dB + 20 log10|a / b|
    assert sar == pytest.approx(10 * np.log10(ts / tr), abs=1e-9)  # = 10 dB + 20 log10|a / c|
    assert metrics.si_sdr(s, enhanced) == pytest.approx(10 * np.log10(ts / (tn + tr)), abs=1e-9)
    # 1 / SDR = 1 / SIR + 1 / SAR (as ratios) when the parts are orthogonal
    assert 10 ** (-metrics.si_sdr(s, enhanced) / 10) == pytest.approx(10 ** (-sir / 10) + 10 ** (-sar / 10))


def test_si_sir_sar_match_the_reference_on_correlated_signals():
    """Speech and noise not orthogonal (real files never are): the separate projections of SGMSE+'s
    code, and the SI-SDR of the same decomposition equal to the project's Le Roux SI-SDR."""
    rng = np.random.default_rng(3)
    s = rng.standard_normal(8000)
    n = 0.4 * rng.standard_normal(8000) + 0.2 * s  # correlated with the speech
    s, n = s - s.mean(), n - n.mean()
    for enhanced in (s + n, 0.9 * s + 0.1 * n + 0.05 * rng.standard_normal(8000), -3 * s + 0.01 * n):
        enhanced = enhanced - enhanced.mean()
        sdr, sir, sar = _energy_ratios_reference(enhanced, s, n)
        assert metrics.si_sir_sar(s, enhanced, s + n) == pytest.approx((sir, sar), abs=1e-9)
        assert metrics.si_sdr(s, enhanced) == pytest.approx(sdr, abs=1e-9)
    target, e_noise, e_art = metrics.si_sdr_components(s, enhanced, s + n)
    np.testing.assert_allclose(target + e_noise + e_art, enhanced, atol=1e-12)


def test_si_sir_sar_are_scale_and_offset_invariant():
    s, n, r = _orthogonal_parts(8000, (0.0, -6.0, -20.0), seed=4)
    enhanced = s + 0.2 * n + r
    reference = metrics.si_sir_sar(s, enhanced, s + n)
    assert reference == pytest.approx((6.0 + 20 * np.log10(5.0), 20.0), abs=1e-9)
    for scale in (1e-6, 0.5, -3.0):
        assert metrics.si_sir_sar(s, scale * enhanced, s + n) == pytest.approx(reference, abs=1e-9)
        assert metrics.si_sir_sar(abs(scale) * s, enhanced, abs(scale) * (s + n)) == pytest.approx(reference)
    assert metrics.si_sir_sar(s + 0.3, enhanced - 0.1, s + n + 0.7) == pytest.approx(reference, abs=1e-9)


def test_si_sir_sar_degenerate_cases_are_capped_not_nan():
    cap = metrics.SI_SDR_MAX_DB
    s, n, r = _orthogonal_parts(8000, (0.0, 0.0, -10.0), seed=5)
    cases = {
        "the noisy input, noise orthogonal: no artefacts": ((s, s + n, s + n), (0.0, cap)),
        "the clean speech itself": ((s, 2 * s, s + n), (cap, cap)),
        "no interference (noisy = clean + a constant)": ((s, s + r, s + 0.5), (cap, 10.0)),
        "only the noise: no target, no artefacts": ((s, n, s + n), (-cap, -cap)),
        "only artefacts": ((s, r, s + n), (-cap, -cap)),
        "a trace of the target under the noise": ((s, 1e-8 * s + n, s + n), (-cap, cap)),
    }
    for name, (args, expected) in cases.items():
        got = metrics.si_sir_sar(*args)
        assert all(math.isfinite(v) for v in got), name
        assert got == pytest.approx(expected, abs=1e-9), name
    with pytest.raises(AudioError, match="^ref: is constant .*SI-SIR and SI-SAR are undefined$"):
        metrics.si_sir_sar(np.full(100, 0.2), s[:100], s[:100], names=("ref", "out"))
    with pytest.raises(AudioError, match="^out: is constant"):
        metrics.si_sir_sar(s, np.zeros_like(s), s + n, names=("ref", "out"))
    with pytest.raises(AudioError, match=r"one length, got clean \(8000,\), enhanced \(8000,\), noisy \(10,"):
        metrics.si_sir_sar(s, s + n, (s + n)[:10])


def test_score_pair_with_the_noisy_input_adds_si_sir_and_si_sar(speech, voicebank):
    noisy = _read(voicebank / "noisy" / "p232_052.wav")
    enhanced = _read(voicebank / "enhanced_cmgan" / "p232_052.wav")
    plain = metrics.score_pair(speech, enhanced)
    full = metrics.score_pair(speech, enhanced, noisy=noisy)
    assert list(full) == list(metrics.METRICS) == metrics.score_keys(noisy=True)
    assert {k: full[k] for k in plain} == plain  # the other metrics do not change
    c, e, y = speech - speech.mean(), enhanced - enhanced.mean(), noisy - noisy.mean()
    sdr, sir, sar = _energy_ratios_reference(e, c, y - c)
    assert (full["si_sdr"], full["si_sir"], full["si_sar"]) == pytest.approx((sdr, sir, sar), abs=1e-9)
    assert full["si_sir"] > full["si_sar"] + 5  # CMGAN leaves little noise; its error is mostly artefacts
    baseline = metrics.score_pair(speech, noisy, noisy=noisy)  # the noisy row: barely any artefacts
    assert baseline["si_sar"] > baseline["si_sir"] + 20 and baseline["si_sar"] <= metrics.SI_SDR_MAX_DB
    padded = metrics.score_pair(speech, enhanced, noisy=np.concatenate([noisy, np.zeros(400)]))
    assert padded == pytest.approx(full, abs=1e-9)  # a padded noisy file is trimmed like the others
    with pytest.raises(AudioError, match="^ref.wav has 35184 samples but in.wav has 20000"):
        metrics.score_pair(speech, enhanced, names=("ref.wav", "out.wav", "in.wav"), noisy=noisy[:20000])
    with pytest.raises(AudioError, match="^noisy: contains NaN"):
        metrics.score_pair(speech, enhanced, noisy=np.full_like(noisy, np.nan))


def test_score_files_with_noisy_inputs(voicebank):
    utt = SHORT_UTTS[0]
    clean, noisy = voicebank / "clean" / f"{utt}.wav", voicebank / "noisy" / f"{utt}.wav"
    enhanced = voicebank / "enhanced_cmgan" / f"{utt}.wav"
    rows = metrics.score_files([(utt, clean, enhanced, noisy), ("baseline", clean, noisy, noisy)],
                               workers=1, progress=False, extra_conventions=("published",))
    assert list(rows[0]) == ["utt", *metrics.score_keys("matlab", ("published",), noisy=True)]
    expected = metrics.score_pair(_read(clean), _read(enhanced), noisy=_read(noisy))
    assert {k: rows[0][k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert rows[1]["si_sir"] < rows[0]["si_sir"]  # the model removed noise
    failed = metrics.score_files([(utt, clean, enhanced, voicebank / "missing.wav")], workers=1,
                                 progress=False, allow_errors=True)
    assert "missing.wav" in failed[0]["error"] and math.isnan(failed[0]["si_sar"])
    with pytest.raises(ConfigError, match=r"all of one kind; got items of \[3, 4\] fields"):
        metrics.score_files([(utt, clean, enhanced), (utt, clean, enhanced, noisy)], workers=1,
                            progress=False)


def test_published_convention_is_higher_by_the_documented_offsets(scored):
    """Published minus MATLAB on the 25 noisy files: CSIG +0.0948, CBAK and COVL +0.0755 (fixture TSVs)."""
    rows = [row for (folder, _), row in scored.items() if folder == "noisy"]
    offsets = {m: np.array([row[f"{m}_published"] - row[m] for row in rows]) for m in metrics.COMPOSITES}
    assert np.mean(offsets["csig"]) == pytest.approx(0.0948, abs=1e-3)
    assert np.mean(offsets["cbak"]) == pytest.approx(0.0755, abs=1e-3)
    assert np.mean(offsets["covl"]) == pytest.approx(0.0755, abs=1e-3)
    assert all(np.all(v >= 0) for v in offsets.values())  # the floor only ever flattens quiet valleys


def test_conventions_share_everything_but_the_composites(voicebank):
    clean = _read(voicebank / "clean" / "p232_052.wav")
    noisy = _read(voicebank / "noisy" / "p232_052.wav")
    matlab = metrics.score_pair(clean, noisy)
    published = metrics.score_pair(clean, noisy, convention="published")
    both = metrics.score_pair(clean, noisy, extra_conventions=("published",))
    assert list(both) == [*metrics.score_keys(), "csig_published", "cbak_published", "covl_published"]
    assert both == {**matlab, **{f"{m}_published": published[m] for m in metrics.COMPOSITES}}
    assert metrics.score_pair(clean, noisy, convention="matlab") == matlab  # the default
    for key in ("pesq", "ssnr", "stoi", "estoi", "si_sdr"):
        assert published[key] == matlab[key]
    assert all(published[m] > matlab[m] for m in metrics.COMPOSITES)
    # the published convention is the MATLAB one with WSS's band energies scaled by 32768**-2: the
    # same as MATLAB on samples 32768 times smaller (LLR and SSNR depend on the scale only via eps)
    quiet = metrics.composite(clean / 32768, noisy / 32768, pesq=matlab["pesq"])
    for m in metrics.COMPOSITES:
        assert quiet[m] == pytest.approx(published[m], abs=1e-6)
    wss = metrics.wss_frames(clean, noisy, convention="published")
    assert wss.shape == metrics.wss_frames(clean, noisy).shape


@pytest.mark.parametrize("bad", ["MATLAB", "cmgan", "", None])
def test_unknown_convention_is_a_clean_error(bad):
    signal = np.zeros(16000)
    with pytest.raises(ConfigError) as exc:
        metrics.composite(signal, signal, pesq=2.0, convention=bad)
    expected = f"unknown metrics convention {bad!r}: use one of matlab, published (default matlab)"
    assert str(exc.value) == expected
    for call in (lambda: metrics.score_pair(signal, signal, convention=bad),
                 lambda: metrics.score_pair(signal, signal, extra_conventions=(bad,)),
                 lambda: metrics.score_files([], convention=bad),
                 lambda: metrics.score_dirs("nowhere", "nowhere", convention=bad)):
        with pytest.raises(ConfigError, match="unknown metrics convention"):
            call()


def _peaks_loop(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """composite.m's nearest-peak search, written as its loops."""
    n_slopes = slope.size
    out = np.empty(n_slopes)
    for i in range(n_slopes):
        n = i
        if slope[i] > 0:
            while n < n_slopes and slope[n] > 0:
                n += 1
            out[i] = energy[n - 1]
        else:
            while n >= 0 and slope[n] <= 0:
                n -= 1
            out[i] = energy[n + 1]
    return out


def test_vectorised_peak_search_matches_the_loops():
    rng = np.random.default_rng(0)
    energy = np.cumsum(rng.normal(size=(200, 25)), axis=1)
    energy[:5] = np.arange(25)  # monotonic rows: the walks run off either end
    energy[5:10] = -np.arange(25)
    slope = np.diff(energy, axis=1)
    expected = np.stack([_peaks_loop(e, s) for e, s in zip(energy, slope)])
    np.testing.assert_array_equal(metrics._nearest_peaks(energy, slope), expected)


def test_levinson_solves_the_normal_equations():
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(6, 480)) * np.hanning(480)
    r = metrics._autocorrelation(frames, 16)
    lpc = metrics._levinson(r)
    for row, poly in zip(r, lpc):
        np.testing.assert_allclose(-poly[1:], solve_toeplitz(row[:16], row[1:17]), rtol=1e-8, atol=1e-10)
    silent = metrics._levinson(np.zeros((1, 17)))
    np.testing.assert_array_equal(silent, np.eye(1, 17))  # flat spectrum, not NaN


def _copy(voicebank, tmp_path, clean_utts, enhanced_utts, extra=None):
    (tmp_path / "clean").mkdir()
    (tmp_path / "enh").mkdir()
    for utt in clean_utts:
        shutil.copy(voicebank / "clean" / f"{utt}.wav", tmp_path / "clean")
    for utt in enhanced_utts:
        shutil.copy(voicebank / "noisy" / f"{utt}.wav", tmp_path / "enh")
    if extra:
        shutil.copy(voicebank / "noisy" / f"{clean_utts[0]}.wav", tmp_path / "enh" / extra)
    return tmp_path / "clean", tmp_path / "enh"


def test_score_dirs_scores_the_intersection(voicebank, tmp_path, capsys):
    clean, enh = _copy(voicebank, tmp_path, SHORT_UTTS, SHORT_UTTS[:2], extra="stray.wav")
    out = tmp_path / "rows" / "scores.csv"
    summary = metrics.score_dirs(clean, enh, out_csv=out, workers=1, allow_missing=True)
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("effifusion")] == [
        f"effifusion score: warning: 1 of 3 clean references in {clean} have no enhanced file in {enh} "
        f"({SHORT_UTTS[2]}.wav); means are over the 2 present",
        f"effifusion score: warning: 1 enhanced file(s) in {enh} have no clean reference in {clean} "
        "(stray.wav); left out",
    ]
    assert summary["n"] == 2
    assert summary["unmatched_enhanced"] == ["stray.wav"]
    assert summary["missing_enhanced"] == 1
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [row["utt"] for row in rows] == SHORT_UTTS[:2]
    assert list(rows[0]) == ["utt", *metrics.score_keys()]  # no noisy folder: no SI-SIR / SI-SAR
    for key in metrics.score_keys():
        assert summary["means"][key] == pytest.approx(np.mean([float(row[key]) for row in rows]))
    assert not list(out.parent.glob(".*.tmp"))


def test_score_dirs_without_common_names(voicebank, tmp_path):
    clean, enh = _copy(voicebank, tmp_path, SHORT_UTTS[:1], SHORT_UTTS[1:])
    with pytest.raises(DataError, match="no WAV file names in common"):
        metrics.score_dirs(clean, enh, workers=1)


def test_failed_files_are_listed(voicebank, tmp_path):
    clean, enh = _copy(voicebank, tmp_path, SHORT_UTTS[:2], SHORT_UTTS[:1])
    sf.write(enh / f"{SHORT_UTTS[1]}.wav", np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16")
    sf.write(tmp_path / "wide.wav", np.zeros((16000, 1)) + 0.1, 48000)
    pairs = [(utt, clean / f"{utt}.wav", enh / f"{utt}.wav") for utt in SHORT_UTTS[:2]]
    pairs.append(("wide", clean / f"{SHORT_UTTS[0]}.wav", tmp_path / "wide.wav"))
    with pytest.raises(AudioError, match=rf"2 of 3 files could not be scored:\n  {SHORT_UTTS[1]}: .*silent"):
        metrics.score_files(pairs, workers=1, progress=False)
    rows = metrics.score_files(pairs, workers=1, progress=False, allow_errors=True)
    assert "error" not in rows[0] and rows[0]["pesq"] > 1
    assert "silent" in rows[1]["error"] and math.isnan(rows[1]["pesq"])
    assert "48000 Hz" in rows[2]["error"] and "wide.wav" in rows[2]["error"]


def test_cli_score_prints_json(voicebank, tmp_path, capsys):
    clean, enh = _copy(voicebank, tmp_path, SHORT_UTTS[:1], SHORT_UTTS[:1])
    out = tmp_path / "scores.csv"
    argv = ["score", "--clean", str(clean), "--enhanced", str(enh), "--out", str(out), "--workers", "1"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 1 and list(summary["means"]) == metrics.score_keys()
    assert out.is_file()
    assert summary["convention"] == "matlab" and "matlab" in summary["convention_note"]
    assert main(["score", "--clean", str(tmp_path / "nope"), "--enhanced", str(enh)]) == 2
    assert "nope: folder not found" in capsys.readouterr().err


def test_cli_score_published_convention(voicebank, tmp_path, capsys):
    clean, enh = _copy(voicebank, tmp_path, SHORT_UTTS[:1], SHORT_UTTS[:1])
    out = tmp_path / "scores.csv"
    argv = ["score", "--clean", str(clean), "--enhanced", str(enh), "--out", str(out), "--workers", "1"]
    assert main([*argv, "--convention", "published"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["convention"] == "published" and "CMGAN/MP-SENet" in summary["convention_note"]
    labelled = ["pesq", "csig_published", "cbak_published", "covl_published", "ssnr", "stoi", "estoi",
                "si_sdr"]
    assert list(summary["means"]) == labelled  # never a bare "csig" that could pass for MATLAB's
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["utt", *labelled]
    with open(voicebank / "reference_metrics_noisy_published_script.tsv") as f:
        ref = next(r for r in csv.DictReader(f, delimiter="\t") if r["utt"] == SHORT_UTTS[0])
    for column in ("CSIG", "CBAK", "COVL"):
        assert summary["means"][f"{column.lower()}_published"] == pytest.approx(float(ref[column]), abs=1e-3)

    with pytest.raises(SystemExit) as exc:  # argparse refuses other names before any work
        main([*argv, "--convention", "pysepm"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'pysepm'" in err and "matlab" in err and "published" in err
    assert list(metrics.CONVENTIONS) == ["matlab", "published"]  # the CLI's choices, kept in step


def test_cli_score_with_noisy_folder(voicebank, tmp_path, capsys):
    clean, enh = _copy(voicebank, tmp_path, SHORT_UTTS[:2], SHORT_UTTS[:2])
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    shutil.copy(voicebank / "noisy" / f"{SHORT_UTTS[0]}.wav", noisy)
    out = tmp_path / "scores.csv"
    argv = ["score", "--clean", str(clean), "--enhanced", str(enh), "--noisy", str(noisy), "--workers", "1"]
    assert main([*argv, "--out", str(out)]) == 2  # one noisy file lacking: refused before scoring
    assert _reports(capsys.readouterr().err) == [
        f"effifusion score: error: 1 of 2 files to score have no noisy input in {noisy} "
        f"({SHORT_UTTS[1]}.wav); SI-SIR and SI-SAR need one for each (or leave out --noisy)"]
    assert not out.exists()
    shutil.copy(voicebank / "noisy" / f"{SHORT_UTTS[1]}.wav", noisy)
    assert main([*argv, "--out", str(out), "--convention", "published"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["means"]) == ["pesq", "csig_published", "cbak_published", "covl_published", "ssnr",
                                      "stoi", "estoi", "si_sdr", "si_sir", "si_sar"]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    for key in ("si_sdr", "si_sir", "si_sar"):
        assert summary["means"][key] == pytest.approx(np.mean([float(row[key]) for row in rows]))
    # enhanced = noisy here: the noise is all still there, and the residual is nearly all noise
    assert summary["means"]["si_sir"] == pytest.approx(summary["means"]["si_sdr"], abs=0.1)
    assert summary["means"]["si_sar"] > summary["means"]["si_sdr"] + 20
    argv[argv.index("--noisy") + 1] = str(tmp_path / "no")
    assert main(argv) == 2
    assert f"{tmp_path / 'no'}: folder not found" in capsys.readouterr().err


def _synthetic_dirs(tmp_path, clean_names, enhanced_names):
    """Folders of synthetic speech (PESQ accepts it); enhanced = clean plus a little noise."""
    from helpers import synthetic_speech

    folders = tmp_path / "clean", tmp_path / "enh"
    for folder, names, noise in zip(folders, (clean_names, enhanced_names), (0.0, 0.01)):
        folder.mkdir()
        for i, name in enumerate(names):
            x = synthetic_speech(1.0, seed=i)
            sf.write(folder / name, x + noise * np.random.default_rng(i).standard_normal(len(x)), 16000)
    return folders


def _reports(err):
    return [line for line in err.splitlines() if line.startswith("effifusion ")]


def test_cli_score_missing_enhanced_files_are_an_error_unless_allowed(tmp_path, capsys, monkeypatch):
    names = [f"u{i}.wav" for i in range(7)]
    clean, enh = _synthetic_dirs(tmp_path, names, names[:1] + ["stray.wav"])
    argv = ["score", "--clean", str(clean), "--enhanced", str(enh), "--workers", "1"]
    real_score_files = metrics.score_files
    monkeypatch.setattr(metrics, "score_files", lambda *a, **k: pytest.fail("scored before refusing"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _reports(captured.err) == [
        f"effifusion score: error: 6 of 7 clean references in {clean} have no enhanced file in {enh} "
        "(u1.wav, u2.wav, u3.wav, u4.wav, u5.wav, ...); pass --allow-missing to score the 1 present"]

    monkeypatch.setattr(metrics, "score_files", real_score_files)
    assert main([*argv, "--allow-missing"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["n"] == 1 and summary["missing_enhanced"] == 6 and summary["unmatched_enhanced"] == ["stray.wav"]
    assert _reports(captured.err) == [
        f"effifusion score: warning: 6 of 7 clean references in {clean} have no enhanced file in {enh} "
        "(u1.wav, u2.wav, u3.wav, u4.wav, u5.wav, ...); means are over the 1 present",
        f"effifusion score: warning: 1 enhanced file(s) in {enh} have no clean reference in {clean} "
        "(stray.wav); left out",
    ]


def test_cli_score_unusable_out_fails_before_scoring(tmp_path, capsys, monkeypatch):
    clean, enh = _synthetic_dirs(tmp_path, ["a.wav"], ["a.wav"])
    monkeypatch.setattr(metrics, "score_files", lambda *a, **k: pytest.fail("scored before checking --out"))
    argv = ["score", "--clean", str(clean), "--enhanced", str(enh), "--workers", "1", "--out"]
    cases = {
        tmp_path: f"{tmp_path}: is a folder; --out takes a CSV file path",
        clean / "a.wav" / "scores.csv": f"{clean / 'a.wav'}: is a file, so it cannot be the folder of --out scores.csv",
    }
    for out, message in cases.items():
        assert main([*argv, str(out)]) == 2
        assert _reports(capsys.readouterr().err) == [f"effifusion score: error: {message}"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_score_read_only_out_folder(tmp_path, capsys, monkeypatch):
    clean, enh = _synthetic_dirs(tmp_path, ["a.wav"], ["a.wav"])
    monkeypatch.setattr(metrics, "score_files", lambda *a, **k: pytest.fail("scored before checking --out"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["score", "--clean", str(clean), "--enhanced", str(enh), "--out", str(ro / "s.csv")]) == 2
    finally:
        ro.chmod(0o755)
    assert _reports(capsys.readouterr().err) == [
        f"effifusion score: error: {ro}: folder of --out s.csv is not writable (Permission denied)"]
