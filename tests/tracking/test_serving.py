"""The served model (tracking/serving.py): requests and answers in-process, then a real `mlflow models serve`.

In-process tests run the request handling on an Enhancer around a stand-in network (no export needed).
The slow test registers the tiny export's model as `effifusion report --register` does, serves it with
`mlflow models serve -m models:/NAME/VERSION --env-manager local` on 127.0.0.1, and compares what it answers
to `effifusion enhance` on the same files; bad requests get a 400 with one line and the server goes on.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from effifusion.runtime.enhancer import Enhancer
from effifusion.runtime.files import enhance_file
from effifusion.tracking import serving
from helpers import FIXTURES, diffusion_onnx, synthetic_speech

NOISY = FIXTURES / "voicebank_test_16k" / "noisy" / "p232_003.wav"  # 7.2 s, 16 kHz, PCM_16


def _stand_in() -> Enhancer:
    """An Enhancer at 16 kHz whose 'network' is a fixed gain with a one-sample delay."""
    def run_batch(x: np.ndarray) -> np.ndarray:
        return 0.5 * np.concatenate([x[:, :1], x[:, :-1]], axis=1)

    return Enhancer(run_batch, 16000, "stand-in", "stand-in")


def _wav_bytes(audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sr, subtype=subtype, format="WAV")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_samples_come_back_enhanced_at_their_rate_and_shape():
    enhancer = _stand_in()
    x = np.stack([synthetic_speech(0.5, 1, 48000), synthetic_speech(0.5, 2, 48000)], axis=1)
    out = serving.enhance_request(enhancer, {"audio": x.tolist(), "sample_rate": 48000})
    assert out["sample_rate"] == 48000 and out["audio"].shape == x.shape
    np.testing.assert_array_equal(out["audio"], enhancer.enhance(x, 48000))
    limited = serving.enhance_request(enhancer, {"audio": x[:, 0], "sample_rate": np.array(48000.0),
                                                 "atten_lim_db": 0})
    np.testing.assert_allclose(limited["audio"], x[:, 0], atol=1e-6)  # a 0 dB limit gives the input back


def test_a_files_bytes_come_back_as_enhance_writes_them(tmp_path):
    enhancer = _stand_in()
    data = _wav_bytes(synthetic_speech(0.6, 3, 44100), 44100)
    (tmp_path / "in.wav").write_bytes(data)
    expected = enhance_file(enhancer, tmp_path / "in.wav", tmp_path / "out.wav", progress=False).read_bytes()
    out = serving.enhance_request(enhancer, {"wav_base64": np.array(_b64(data))})
    assert out["sample_rate"] == 44100 and base64.b64decode(out["wav_base64"]) == expected


@pytest.mark.parametrize("request_, words", [
    ({"audio": [0.1, 0.2], "sample_rate": "16k"}, "sample_rate must be a positive integer"),
    ({"audio": [0.1, 0.2], "sample_rate": 0}, "sample_rate must be a positive integer"),
    ({"audio": [0.1, 0.2], "sample_rate": True}, "sample_rate must be a positive integer"),
    ({"audio": [0.1, 0.2], "sample_rate": 16000.5}, "sample_rate must be a positive integer"),
    ({"audio": [], "sample_rate": 16000}, "audio must hold samples"),
    ({"audio": [[[0.1]]], "sample_rate": 16000}, "audio must hold samples"),
    ({"audio": ["a", "b"], "sample_rate": 16000}, "audio must be numbers"),
    ({"audio": [0.1, float("nan")], "sample_rate": 16000}, "NaN"),
    ({"audio": [0.1, 0.2]}, "needs 'sample_rate'"),
    ({"sample_rate": 16000}, "no 'audio'"),
    ({"wav_base64": _b64(b"hello, not audio at all")}, "wav_base64: not a readable audio file"),
    ({"wav_base64": "!!!"}, "not valid base64"),
    ({"wav_base64": ""}, "non-empty base64"),
    ({"wav_base64": _b64(b"x"), "audio": [0.1], "sample_rate": 16000}, "not both"),
    ({"audio": [0.1], "sample_rate": 16000, "rate": 1}, "unknown field(s) 'rate'"),
    ({"audio": [0.1], "sample_rate": 16000, "mix": 2}, "mix 2"),
])
def test_a_bad_request_is_one_line_and_a_400(request_, words):
    with pytest.raises(serving.RequestError) as info:
        serving.enhance_request(_stand_in(), request_)
    message = info.value.message
    assert words in message and "\n" not in message and info.value.get_http_status_code() == 400


def test_the_servers_prefixed_message_is_dropped():
    """The scoring server rewrites ``e.message`` to 'Failed to predict data <the whole input>'."""
    exc = serving.RequestError("sample_rate must be a positive integer (Hz), got '16k'")
    exc.message = f"Failed to predict data '{list(range(1000))}'. \nError: {exc.message}"
    assert json.loads(exc.serialize_as_json())["message"] == "sample_rate must be a positive integer (Hz), got '16k'"


def test_records_are_recordings():
    import pandas as pd

    model = serving.EnhancerModel()
    model.enhancer = _stand_in()
    x = synthetic_speech(0.3, 4)
    table = pd.DataFrame([{"audio": x.tolist(), "sample_rate": 16000}, {"wav_base64": _b64(_wav_bytes(x, 16000))}])
    out = model.predict(None, table)
    assert list(out["sample_rate"]) == [16000, 16000]
    np.testing.assert_array_equal(out["audio"][0], model.enhancer.enhance(x, 16000))
    assert isinstance(out["wav_base64"][1], str)
    with pytest.raises(serving.RequestError, match="record 0: sample_rate"):
        model.predict(None, pd.DataFrame([{"audio": [0.1], "sample_rate": "x"}]))


def test_instances_are_recordings():
    """{"instances": [{...}]} reaches the model as fields of one entry per recording, not as channels."""
    model = serving.EnhancerModel()
    model.enhancer = _stand_in()
    x = synthetic_speech(0.3, 6)
    out = model.predict(None, {"audio": np.array([x]), "sample_rate": np.array([16000])})
    assert len(out) == 1 and out["audio"][0].shape == x.shape
    np.testing.assert_array_equal(out["audio"][0], model.enhancer.enhance(x, 16000))
    with pytest.raises(serving.RequestError, match="one entry per recording"):
        model.predict(None, {"audio": np.array([x, x]), "sample_rate": np.array([16000])})


def _stand_in_diffusion(folder: Path) -> dict:
    """helpers.diffusion_onnx's stand-in export and the export report that names its two graphs."""
    files = [str(diffusion_onnx(folder)), str(folder / "d.predictive.onnx")]
    return {"onnx_file": files[0], "onnx_files": files, "onnx_bytes": 1, "onnx_zip_bytes": 1,
            "onnx_parity_max_abs": 0.0}


def test_a_diffusion_model_is_registered_with_its_predictive_graph(tmp_path, monkeypatch):
    """report --register's path for a diffusion export: the predictive graph the export logged beside
    export.json goes into the pyfunc, which answers as the Enhancer on the files does."""
    import mlflow

    from effifusion.core.errors import DataError
    from effifusion.evaluation.report import REGISTERED_MODEL, register_best
    from effifusion.inference.export import log_to_mlflow

    report = _stand_in_diffusion(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading the model puts its code folder first
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("diffusion", artifact_location=(tmp_path / "art").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            log_to_mlflow(Path(report["onnx_file"]), report)
        with mlflow.start_run(experiment_id=exp) as bare:  # an export from before the predictive graph was logged
            log_to_mlflow(Path(report["onnx_file"]), {**report, "onnx_files": report["onnx_files"][:1]})
        with pytest.raises(DataError, match="predictive network export/d.predictive.onnx was not logged"):
            register_best(bare.info.run_id)
        registered = register_best(run.info.run_id)
        model = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{registered['version']}")
    finally:
        mlflow.set_tracking_uri(previous)
    x = synthetic_speech(0.4, 7, 24000)
    got = model.predict({"audio": x, "sample_rate": 24000})
    want = Enhancer.from_file(report["onnx_file"]).enhance(x, 24000)
    assert got["sample_rate"] == 24000 and not np.allclose(want, x)
    np.testing.assert_array_equal(got["audio"], want)


# ---------------------------------------------------------------------------------------------
# A real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def served(tiny_export: dict, tmp_path_factory: pytest.TempPathFactory):
    """The tiny export logged as the export stage logs it, registered by report.register_best, served by
    `mlflow models serve` (one process for the module); yields its /invocations URL and the folder."""
    import mlflow

    from effifusion.evaluation.report import REGISTERED_MODEL, register_best
    from effifusion.inference.export import log_to_mlflow

    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.create_experiment("serve-test", artifact_location=(tmp / "art").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            log_to_mlflow(tiny_export["onnx"], tiny_export["report"])
        registered = register_best(run.info.run_id)
        again = register_best(run.info.run_id)  # the run's pyfunc is reused, not logged twice
        client = mlflow.MlflowClient()
        sources = {client.get_model_version(REGISTERED_MODEL, r["version"]).source for r in (registered, again)}
        logged = [m.name for m in mlflow.search_logged_models(experiment_ids=[exp], output_format="list")]
    finally:
        mlflow.set_tracking_uri(previous)
    assert registered == {"name": REGISTERED_MODEL, "version": 1} and again["version"] == 2
    assert len(sources) == 1 and sorted(logged) == ["enhancer", "onnx"]

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    log = (tmp / "serve.log").open("w")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
           f"models:/{registered['name']}/{registered['version']}", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(f"mlflow models serve did not come up:\n{(tmp / 'serve.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            time.sleep(0.5)
        yield {"url": f"{base}/invocations", "tmp": tmp, "proc": proc}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.fixture(scope="module")
def inputs_and_cli(served: dict, tiny_export: dict) -> dict:
    """The fixture recording (PCM_16, 16 kHz; synthesised where ../shared is absent) and a 48 kHz stereo
    FLOAT file made from it, with what `effifusion enhance` writes for each."""
    from effifusion.dsp.audio import resample

    tmp = served["tmp"]
    if NOISY.is_file():
        noisy, sr = sf.read(NOISY, dtype="float32")
        pcm = NOISY
    else:
        noisy, sr = synthetic_speech(3.0, 5), 16000
        pcm = tmp / "noisy.wav"
        sf.write(pcm, noisy, sr, subtype="PCM_16")
    wide = resample(noisy[: int(1.5 * sr)], sr, 48000)
    stereo = np.stack([wide, 0.5 * wide[::-1]], axis=1).astype(np.float32)
    flt = tmp / "wide.wav"
    sf.write(flt, stereo, 48000, subtype="FLOAT")
    out = tmp / "cli"
    subprocess.run([str(Path(sys.executable).parent / "effifusion"), "enhance", str(pcm), str(flt), "-o", str(out),
                    "--model", str(tiny_export["onnx"]), "-q"], check=True, timeout=120)
    return {"pcm": pcm, "pcm_out": out / pcm.name, "float": flt, "float_out": out / "wide.wav"}


@pytest.mark.slow
def test_mlflow_models_serve_enhances_like_the_cli(served, inputs_and_cli):
    url, io_ = served["url"], inputs_and_cli

    status, body = _post(url, {"inputs": {"wav_base64": _b64(io_["pcm"].read_bytes())}})
    assert status == 200, body
    answer = body["predictions"]
    got, sr = sf.read(io.BytesIO(base64.b64decode(answer["wav_base64"])), dtype="float32")
    want, want_sr = sf.read(io_["pcm_out"], dtype="float32")
    assert sr == want_sr == answer["sample_rate"] and got.shape == want.shape
    assert sf.info(io.BytesIO(base64.b64decode(answer["wav_base64"]))).subtype == "PCM_16"
    assert np.max(np.abs(got - want)) <= 1 / 32768  # one 16-bit step

    samples, rate = sf.read(io_["float"], dtype="float32")
    status, body = _post(url, {"inputs": {"audio": samples.tolist(), "sample_rate": rate}})
    assert status == 200, body
    got = np.asarray(body["predictions"]["audio"], dtype=np.float32)
    want, _ = sf.read(io_["float_out"], dtype="float32")
    assert body["predictions"]["sample_rate"] == 48000 and got.shape == want.shape == samples.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_bad_requests_get_a_400_and_the_server_goes_on(served, inputs_and_cli):
    url = served["url"]
    bad = [({"inputs": {"audio": [0.1, 0.2, 0.3], "sample_rate": "16000"}}, "sample_rate must be a positive integer"),
           ({"inputs": {"audio": [], "sample_rate": 16000}}, "audio must hold samples"),
           ({"inputs": {"wav_base64": _b64(b"RIFF....WAVEfmt but no audio")}}, "not a readable audio file")]
    for body, words in bad:
        status, answer = _post(url, body)
        assert 400 <= status < 500, (status, answer)
        assert words in answer["message"] and "\n" not in answer["message"], answer
        assert "stack_trace" not in answer
    samples, rate = sf.read(inputs_and_cli["float"], dtype="float32")
    status, answer = _post(url, {"inputs": {"audio": samples[:4800].tolist(), "sample_rate": rate}})
    assert status == 200 and len(answer["predictions"]["audio"]) == 4800
    status, answer = _post(url, {"instances": [{"audio": samples[:4800, 0].tolist(), "sample_rate": rate}]})
    assert status == 200 and len(answer["predictions"]) == 1 and len(answer["predictions"][0]["audio"]) == 4800
    assert served["proc"].poll() is None
