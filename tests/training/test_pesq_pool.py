import math

import numpy as np
import pytest
import soundfile as sf
from pesq import pesq

from effifusion.metrics.pesq import pesq_or_nan
from effifusion.training.pesq_pool import PesqPool
from helpers import fixtures_or_skip

SR = 16000
REFERENCE_WB = 1.0832337141036987  # fixtures/pesq_sample/README: speech vs speech_bab_0dB


@pytest.fixture(scope="module")
def batch():
    folder = fixtures_or_skip("pesq_sample")
    clean, _ = sf.read(folder / "speech.wav", dtype="float32")
    noisy, _ = sf.read(folder / "speech_bab_0dB.wav", dtype="float32")
    n = min(len(clean), len(noisy))
    clean, noisy = clean[:n], noisy[:n]
    mixed = (0.7 * clean + 0.3 * noisy).astype(np.float32)
    cleans = np.stack([clean, clean, np.zeros_like(clean), clean])  # item 2: silent reference
    enhanced = np.stack([noisy, mixed, noisy, clean])
    return cleans, enhanced


def _direct(cleans, enhanced):
    out = []
    for c, e in zip(cleans, enhanced):
        try:
            out.append(pesq(SR, c, e, "wb"))
        except Exception:
            out.append(math.nan)
    return np.array(out)


def test_pesq_item_matches_reference_and_never_raises(batch):
    cleans, enhanced = batch
    assert pesq_or_nan(cleans[0], enhanced[0], SR) == pytest.approx(REFERENCE_WB, abs=1e-6)
    assert math.isnan(pesq_or_nan(cleans[2], enhanced[2], SR))  # no utterance in the reference
    assert math.isnan(pesq_or_nan(cleans[0], np.zeros_like(cleans[0]), SR))  # pesq raises ValueError here
    assert math.isnan(pesq_or_nan(cleans[0][:1000], enhanced[0][:1000], SR))  # too short


@pytest.mark.parametrize("workers", [0, 2])
def test_pool_matches_direct_calls(batch, workers):
    cleans, enhanced = batch
    expected = _direct(cleans, enhanced)
    assert np.isnan(expected[2]) and not np.isnan(expected[[0, 1, 3]]).any()
    with PesqPool(workers) as pool:
        first = pool.submit(cleans, enhanced)
        second = pool.submit(cleans[:2], enhanced[:2])  # several batches in flight at once
        scores = first.result()
        assert first.done()
        np.testing.assert_array_equal(np.isnan(scores), np.isnan(expected))
        ok = ~np.isnan(expected)
        np.testing.assert_allclose(scores[ok], expected[ok], rtol=0, atol=1e-9)
        np.testing.assert_allclose(second.result(), expected[:2], rtol=0, atol=1e-9)
        assert scores[0] == pytest.approx(REFERENCE_WB, abs=1e-6)
        np.testing.assert_array_equal(first.result(), scores)  # a second result() is free and equal
        assert pool.n_items == 6
        assert pool.n_failed == 1
        assert pool.wait_s >= 0.0


def test_pool_rejects_mismatched_shapes(batch):
    cleans, enhanced = batch
    with PesqPool(0) as pool, pytest.raises(ValueError, match="must both be"):
        pool.submit(cleans, enhanced[:, :-10])


def test_pool_survives_a_killed_worker(batch):
    import os
    import signal

    cleans, enhanced = batch
    expected = _direct(cleans[:2], enhanced[:2])
    with PesqPool(1) as pool:
        pool.submit(cleans[:1], enhanced[:1]).result()  # the worker process now exists
        (pid,) = list(pool._executor._processes)
        os.kill(pid, signal.SIGKILL)
        with pytest.warns(RuntimeWarning, match="restarting"):
            scores = pool.submit(cleans[:2], enhanced[:2]).result()
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
        again = pool.submit(cleans[:2], enhanced[:2]).result()
        np.testing.assert_allclose(again, expected, rtol=0, atol=1e-9)
        assert pool.n_failed == 0
