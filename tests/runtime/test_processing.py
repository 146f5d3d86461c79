"""The enhancer users call: Enhancer.enhance(wav, sample_rate), the attenuation limit and the mix, the
high band above 8 kHz, one piece vs chunks, -q, --version and --info. Torch-free: hand-made ONNX
models that scale their input (x -> k·x) carry an export's metadata, so every expected output is a
formula of the input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from onnx import TensorProto, helper

from effifusion.cli import main as cli_main
from effifusion.core.errors import ConfigError
from effifusion.dsp.audio import resample
from effifusion.inference.backends import load_enhancer
from effifusion.inference.export import parity_signal
from effifusion.runtime.enhancer import Enhancer
from effifusion.runtime.onnx_model import INPUT_NAME, OUTPUT_NAME
from effifusion.runtime.processing import EnhanceOptions


def scaling_onnx(path: Path, k: float) -> Path:
    """wav [B, N] -> k·wav, with the sample-rate metadata of an export."""
    scale = helper.make_tensor("k", TensorProto.FLOAT, [], [k])
    graph = helper.make_graph(
        [helper.make_node("Mul", [INPUT_NAME, "k"], [OUTPUT_NAME])], "scale",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "samples"])],
        initializer=[scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    helper.set_model_props(model, {"sample_rate": "16000", "min_samples": "400", "arch": "scale",
                                   "memory_mb_per_s": "unmeasured"})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {k: scaling_onnx(folder / f"scale{k:g}.onnx", k) for k in (1.0, 0.5, 0.0)}


def band_energy(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x, axis=0)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return float(spectrum[(f >= lo) & (f < hi)].sum())


def noise(n: int, channels: int | None = None, seed: int = 0) -> np.ndarray:
    shape = (n,) if channels is None else (n, channels)
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# --------------------------------------------------------------------------------- the Python API


def test_enhance_keeps_shape_rate_and_equals_the_segment_call(models: dict[float, Path]) -> None:
    half = Enhancer.from_file(models[0.5])
    x = parity_signal(20_000, 16000)
    np.testing.assert_array_equal(half.enhance(x), half.enhance_segment(x))  # mono, model rate, one piece
    np.testing.assert_array_equal(half.enhance(x, 16000), 0.5 * x)
    stereo = np.stack([x, 0.3 * x], axis=1)
    y = half.enhance(stereo, 16000)
    assert y.shape == stereo.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, 0.5 * stereo, atol=1e-7, rtol=0)
    for sr in (22050, 44100, 48000):
        z = noise(sr + 11, 2, seed=sr)
        out = half.enhance(z, sr)
        assert out.shape == z.shape
        # x -> 0.5·x above the model's rate: the round trip halved plus the high band at the model's gain 0.5
        np.testing.assert_allclose(out, 0.5 * z, atol=2e-6, rtol=0)
    z = noise(8011, 2)  # below it, the 8 kHz input's own band edge (3.8-4 kHz) goes with the round trip
    np.testing.assert_allclose(half.enhance(z, 8000), 0.5 * resample(resample(z, 8000, 16000), 16000, 8000)[:8011],
                               atol=1e-7, rtol=0)


def test_enhance_rejects_bad_input(models: dict[float, Path]) -> None:
    enhancer = load_enhancer(models[1.0])
    for bad in (np.zeros((0,)), np.zeros((4, 2, 2)), np.array([0.1, np.nan])):
        with pytest.raises(ValueError):
            enhancer.enhance(bad, 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        enhancer.enhance(np.ones(100, np.float32), 0)
    with pytest.raises(ConfigError, match="mix"):
        enhancer.enhance(np.ones(100, np.float32), 16000, mix=1.5)
    with pytest.raises(ConfigError, match="attenuation limit"):
        enhancer.enhance(np.ones(100, np.float32), 16000, atten_lim_db=-3)


def test_silent_channel_comes_back_unchanged(models: dict[float, Path]) -> None:
    x = np.stack([noise(48000), np.full(48000, 1e-5, np.float32)], axis=1)
    y = load_enhancer(models[0.5]).enhance(x, 48000)
    np.testing.assert_array_equal(y[:, 1], x[:, 1])
    np.testing.assert_allclose(y[:, 0], 0.5 * x[:, 0], atol=2e-6, rtol=0)


# --------------------------------------------------------------------------------- limit and mix


@pytest.mark.parametrize("atten_lim_db,mix,expected_strength", [
    (None, 1.0, 1.0), (0.0, 1.0, 0.0), (None, 0.0, 0.0), (6.0, 1.0, 1 - 10 ** -0.3),
    (6.0, 0.5, 0.5 * (1 - 10 ** -0.3)), (None, 0.25, 0.25), (120.0, 1.0, 1 - 1e-6),
])
def test_limit_and_mix_are_one_blend(models: dict[float, Path], atten_lim_db: float | None, mix: float,
                                     expected_strength: float) -> None:
    """The zero model removes everything: out = input + s·(0 − input) = (1 − s)·input."""
    assert EnhanceOptions(atten_lim_db=atten_lim_db, mix=mix).strength == pytest.approx(expected_strength)
    x = noise(24_000, 2)
    y = load_enhancer(models[0.0]).enhance(x, 16000, atten_lim_db=atten_lim_db, mix=mix)
    np.testing.assert_allclose(y, (1 - expected_strength) * x, atol=1e-7, rtol=0)


@pytest.mark.parametrize("option", ["--atten-lim-db=0", "--mix=0"])
@pytest.mark.parametrize("name,subtype,sr", [("a.wav", "PCM_16", 44100), ("b.flac", "PCM_24", 16000),
                                             ("c.wav", "FLOAT", 48000)])
def test_no_enhancement_gives_the_input_bit_for_bit(models: dict[float, Path], tmp_path: Path, option: str,
                                                    name: str, subtype: str, sr: int) -> None:
    src = tmp_path / name
    sf.write(src, noise(sr, 2), sr, subtype=subtype)
    out = tmp_path / "out"
    assert cli_main(["enhance", str(src), "-o", str(out), "--model", str(models[0.0]), "-q", option]) == 0
    dtype = "float32" if subtype == "FLOAT" else "int32"
    np.testing.assert_array_equal(sf.read(out / name, dtype=dtype)[0], sf.read(src, dtype=dtype)[0])


def test_six_db_limit_is_the_expected_blend(models: dict[float, Path], tmp_path: Path) -> None:
    """Zero model, PCM_16 at 16 kHz: out = 10^(−6/20)·input, to the written format's rounding."""
    src = tmp_path / "x.wav"
    sf.write(src, noise(32_000), 16000, subtype="PCM_16")
    x, _ = sf.read(src, dtype="float32")
    assert cli_main(["enhance", str(src), "-o", str(tmp_path / "out"), "--model", str(models[0.0]), "-q",
                     "--atten-lim-db", "6"]) == 0
    y, _ = sf.read(tmp_path / "out" / "x.wav", dtype="float32")
    np.testing.assert_allclose(y, 10 ** (-6 / 20) * x, atol=1 / 32768, rtol=0)
    assert cli_main(["enhance", str(src), "-o", str(tmp_path / "mix"), "--model", str(models[0.0]), "-q",
                     "--atten-lim-db", "6", "--mix", "0.5"]) == 0
    y, _ = sf.read(tmp_path / "mix" / "x.wav", dtype="float32")
    np.testing.assert_allclose(y, (1 - 0.5 * (1 - 10 ** (-6 / 20))) * x, atol=1 / 32768, rtol=0)


# --------------------------------------------------------------------------------- the band above 8 kHz


def test_48k_input_keeps_its_energy_above_8_khz(models: dict[float, Path], tmp_path: Path) -> None:
    """White noise at 48 kHz through the x -> 0.5·x model: with the high band the output is 0.5·input
    at every frequency; without it nothing is left above 8 kHz."""
    sr = 48000
    src = tmp_path / "n.wav"
    sf.write(src, noise(2 * sr), sr, subtype="FLOAT")
    x, _ = sf.read(src, dtype="float32")
    for flags, folder in (([], "kept"), (["--no-high-band"], "dropped")):
        assert cli_main(["enhance", str(src), "-o", str(tmp_path / folder), "--model", str(models[0.5]), "-q",
                         *flags]) == 0
    kept, _ = sf.read(tmp_path / "kept" / "n.wav", dtype="float32")
    dropped, _ = sf.read(tmp_path / "dropped" / "n.wav", dtype="float32")
    high_in = band_energy(x, sr, 8500, 24000)
    assert band_energy(kept, sr, 8500, 24000) == pytest.approx(0.25 * high_in, rel=1e-3)
    assert band_energy(dropped, sr, 8500, 24000) < 1e-6 * high_in
    np.testing.assert_allclose(kept, 0.5 * x, atol=2e-6, rtol=0)
    # below 7 kHz both are the model's output
    assert band_energy(dropped, sr, 100, 7000) == pytest.approx(band_energy(kept, sr, 100, 7000), rel=1e-3)


def test_high_band_follows_the_models_gain_per_block(models: dict[float, Path]) -> None:
    """The zero model silences the high band too; the identity keeps all of it (out = input)."""
    x = noise(48000, 1)
    np.testing.assert_allclose(load_enhancer(models[0.0]).enhance(x, 48000), 0, atol=1e-7)
    np.testing.assert_allclose(load_enhancer(models[1.0]).enhance(x, 48000), x, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------------- pieces and chunks


def test_one_piece_up_to_max_piece_s_then_chunks(models: dict[float, Path]) -> None:
    calls: list[int] = []
    enhancer = load_enhancer(models[0.5])
    run = enhancer._run_batch

    def counting(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[1])
        return run(x)

    enhancer._run_batch = counting
    x = noise(16000 * 3)
    y = enhancer.enhance(x, 16000, max_piece_s=3.0)
    assert calls == [48000]  # 3 s in one piece
    np.testing.assert_allclose(y, 0.5 * x, atol=1e-7)
    calls.clear()
    y = enhancer.enhance(x, 16000, max_piece_s=1.0)
    assert calls and set(calls) == {16000} and len(calls) == 3 + 1  # 1 s chunks, 0.25 s cross-fades
    np.testing.assert_allclose(y, 0.5 * x, atol=1e-6)  # a cross-fade of agreeing chunks changes nothing


def test_old_chunk_s_name_still_works(models: dict[float, Path], tmp_path: Path) -> None:
    src = tmp_path / "x.wav"
    sf.write(src, noise(16000), 16000, subtype="FLOAT")
    assert cli_main(["enhance", str(src), "-o", str(tmp_path / "out"), "--model", str(models[0.5]), "-q",
                     "--chunk-s", "0.4"]) == 0
    np.testing.assert_allclose(sf.read(tmp_path / "out" / "x.wav", dtype="float32")[0],
                               0.5 * sf.read(src, dtype="float32")[0], atol=1e-6)


# --------------------------------------------------------------------------------- the command line


def test_quiet_prints_nothing_but_errors(models: dict[float, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"{i}.wav", noise(48000 * 3, seed=i), 48000)
    assert cli_main(["enhance", str(folder), "-o", str(tmp_path / "out"), "--model", str(models[0.5]), "-q",
                     "--max-piece-s", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    (folder / "bad.wav").write_bytes(b"RIFF junk")
    assert cli_main(["enhance", str(folder), "-o", str(tmp_path / "out"), "--model", str(models[0.5]),
                     "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "bad.wav: not a readable audio file" in err[0] and "1 of 4 files failed" in err[1]


def test_version_and_info(models: dict[float, Path], capsys: pytest.CaptureFixture) -> None:
    from effifusion import __version__

    with pytest.raises(SystemExit) as exc:
        cli_main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"effifusion {__version__}"
    assert cli_main(["enhance", "--model", str(models[0.5]), "--info"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["sample_rate"] == 16000 and card["backend"] == "onnxruntime" and card["arch"] == "scale"
    assert card["memory_mb_per_s"] == "unmeasured"


def test_enhance_without_inputs_is_a_usage_error(models: dict[float, Path], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["enhance", "--model", str(models[0.5])])
    assert exc.value.code == 2 and "needs input files" in capsys.readouterr().err


def test_bad_option_is_one_line_before_any_work(models: dict[float, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "x.wav"
    sf.write(src, noise(16000), 16000)
    assert cli_main(["enhance", str(src), "-o", str(tmp_path / "out"), "--model", str(models[0.5]),
                     "--mix", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "effifusion enhance: error: mix 2.0: must be in [0, 1] (1: enhanced, 0: the input)"
    assert not (tmp_path / "out").exists()


def test_resampling_round_trip_is_what_the_model_sees(models: dict[float, Path]) -> None:
    """High band off, identity: the output is the input's 16 kHz round trip, for arrays as for files."""
    x = noise(44100, 2)
    y = load_enhancer(models[1.0]).enhance(x, 44100, high_band=False)
    np.testing.assert_array_equal(y, resample(resample(x, 44100, 16000), 16000, 44100)[: len(x)])


def test_file_streaming_equals_the_array_call(models: dict[float, Path], tmp_path: Path) -> None:
    """Block-wise file processing (2 s reads) and one array call give the same samples: resampling,
    chunks with cross-fades, high band (gain blocks at fixed positions) and blend alike."""
    sr = 44100
    x = np.stack([parity_signal(5 * sr + 123, sr, seed=1), noise(5 * sr + 123, seed=2)], axis=1)
    src = tmp_path / "x.wav"
    sf.write(src, x, sr, subtype="FLOAT")
    options = ["--max-piece-s", "1.5", "--atten-lim-db", "10", "--mix", "0.8"]
    assert cli_main(["enhance", str(src), "-o", str(tmp_path / "out"), "--model", str(models[0.5]), "-q",
                     *options]) == 0
    expected = load_enhancer(models[0.5]).enhance(x, sr, max_piece_s=1.5, atten_lim_db=10, mix=0.8)
    np.testing.assert_array_equal(sf.read(tmp_path / "out" / "x.wav", dtype="float32")[0], expected)


@pytest.mark.parametrize(("env", "threads", "expected"), [("1", None, 1), ("3", None, 3), ("1", 2, 2),
                                                          ("many", None, 0), (None, None, 0)])
def test_onnx_sessions_take_omp_num_threads_unless_told(models, monkeypatch, env, threads, expected) -> None:
    """ONNX Runtime ignores OMP_NUM_THREADS; the enhancer honours it as torch does (0: ONNX Runtime's default)."""
    from effifusion.runtime.onnx_model import onnx_session

    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert onnx_session(models[1.0], threads).get_session_options().intra_op_num_threads == expected
