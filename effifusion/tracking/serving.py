"""The exported model as an MLflow pyfunc that enhances audio: what ``mlflow models serve`` runs.

``EnhancerModel`` wraps the torch-free Enhancer (runtime/enhancer.py) around the export's ONNX
file(s): resampling to the model's rate and back, the high band above it, and for the diffusion
models the sampler with its predictive graph. A request is one recording, in one of two forms:

- samples: ``{"audio": [...], "sample_rate": 48000}`` (``audio`` [N] mono or [N][C] channels, floats
  in [-1, 1]); the answer is ``{"audio": [...], "sample_rate": 48000}``, same shape and rate;
- a file: ``{"wav_base64": "<base64 of the file's bytes>"}`` (WAV, FLAC, ... anything libsndfile
  reads); the answer is ``{"wav_base64": ..., "sample_rate": ...}``: the bytes ``effifusion enhance``
  writes for that file (same container, subtype, rate, channels and length).

Over HTTP the request goes in ``{"inputs": {...}}`` and the answer comes back in
``{"predictions": {...}}``; ``dataframe_records`` takes several recordings, one per record, and gives
one answer per record. A bad request (no samples, a rate that is not a positive integer, bytes that
are no audio file) raises an MlflowException with INVALID_PARAMETER_VALUE: the scoring server
answers 400 with one line and goes on serving.

The model is self-contained: it carries the ONNX file(s) and the torch-free part of this package
(core, dsp, diffusion, runtime and this module, as MLflow ``code_paths``), and its requirements are
the plain install's (numpy, soundfile, onnxruntime, tqdm), pinned to the versions that logged it.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

ARTIFACT = "export"  # the artifact folder holding the ONNX file(s)
LOGGED_NAME = "enhancer"  # the logged model's name in its run (the raw graph is "onnx")
REQUIREMENTS = ("numpy", "soundfile", "onnxruntime", "tqdm")  # the plain install: what the runtime imports
CODE_PARTS = ("__init__.py", "core", "dsp", "diffusion", "runtime", "tracking/__init__.py", "tracking/serving.py")
AUDIO, RATE, WAV = "audio", "sample_rate", "wav_base64"
OPTIONS = ("atten_lim_db", "mix", "high_band")  # EnhanceOptions a request may set (defaults: `effifusion enhance`'s)


class RequestError(MlflowException):
    """A bad request, said in one line: the scoring server answers 400 with exactly this message.

    The server prefixes an exception's message with the whole input (``Failed to predict data '<the
    samples>'``), which would bury the problem under the request; this message keeps its first value.
    """

    def __init__(self, message: str):
        self._line = " ".join(str(message).split())
        super().__init__(self._line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:  # the server's prefixed copy is dropped
        pass


class EnhancerModel(mlflow.pyfunc.PythonModel):
    """An Enhancer behind MLflow's pyfunc interface (see the module's docstring for requests and answers).

    ``model_config``: ``model_file`` (the main ONNX file's name in the artifact folder), ``threads``
    (ONNX Runtime's intra-op threads; default: ONNX Runtime's), ``sampler`` (diffusion models:
    sampler overrides, as ``effifusion enhance --sampler``).
    """

    def load_context(self, context):
        from effifusion.runtime.enhancer import load_onnx

        config = dict(context.model_config or {})
        folder = Path(context.artifacts[ARTIFACT])
        self.enhancer = load_onnx(folder / config["model_file"], threads=config.get("threads"),
                                  sampler=config.get("sampler"))

    # No type hints: MLflow would check requests against them and answer bad ones in its own words (it warns
    # once, on defining the class, that there are none).
    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if model_input.empty:
                raise RequestError("no recording in the request (an empty table)")
            rows = [self._one({k: v for k, v in row.items() if not _missing(v)}, f"record {i}: ")
                    for i, row in enumerate(model_input.to_dict("records"))]
            return pd.DataFrame(rows)
        if isinstance(model_input, dict):
            if _batched(model_input):  # {"instances": [{...}, ...]}: one entry per recording in each field
                return pd.DataFrame(self._one(request, f"instance {i}: ")
                                    for i, request in enumerate(_instances(model_input)))
            return self._one(model_input, "")
        raise RequestError(f"expected {{{AUDIO!r}: [...], {RATE!r}: Hz}} or {{{WAV!r}: '...'}}, got "
                           f"{type(model_input).__name__}")

    def _one(self, request: dict[str, Any], where: str) -> dict[str, Any]:
        try:
            return enhance_request(self.enhancer, request)
        except RequestError as exc:
            raise RequestError(where + exc.message) from None


def _batched(request: dict[str, Any]) -> bool:
    """Whether the scoring server parsed ``{"instances": [...]}``: the rate or the file then arrive as
    one-dimensional arrays, an entry per recording (``{"inputs": ...}`` gives them as 0-d arrays)."""
    return any(isinstance(request.get(key), np.ndarray) and request[key].ndim == 1 for key in (RATE, WAV))


def _instances(request: dict[str, Any]) -> list[dict[str, Any]]:
    sizes = {len(v) if isinstance(v, (np.ndarray, list)) and np.ndim(v) else -1 for v in request.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise RequestError("instances: every field needs one entry per recording (or send one recording as "
                           '{"inputs": {...}})')
    return [{k: v[i] for k, v in request.items()} for i in range(sizes.pop())]


def _missing(value: Any) -> bool:
    """A DataFrame cell a record did not fill (None / NaN)."""
    return value is None or (isinstance(value, float) and np.isnan(value))


def _scalar(value: Any) -> Any:
    """A JSON scalar as parsed by the scoring server (0-d or 1-element arrays) or by pandas, as Python."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


def _rate(value: Any) -> int:
    value = _scalar(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise RequestError(f"{RATE} must be a positive integer (Hz), got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _options(request: dict[str, Any]) -> Any:
    from effifusion.core.errors import EffiFusionError
    from effifusion.runtime.processing import EnhanceOptions

    given = {}
    for key in OPTIONS:
        if key in request:
            value = _scalar(request[key])
            if key == "high_band":
                if not isinstance(value, bool):
                    raise RequestError(f"high_band must be true or false, got {_show(value)}")
            elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RequestError(f"{key} must be a number, got {_show(value)}")
            given[key] = value
    try:
        return EnhanceOptions(**given)
    except (TypeError, ValueError, EffiFusionError) as exc:
        raise RequestError(str(exc)) from None


def enhance_request(enhancer: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One request (samples and rate, or a file's bytes in base64) enhanced; RequestError when it is bad."""
    unknown = sorted(set(request) - {AUDIO, RATE, WAV, *OPTIONS})
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}: expected {AUDIO!r} and {RATE!r}, "
                           f"or {WAV!r} (options: {', '.join(OPTIONS)})")
    options = _options(request)
    if WAV in request:
        if AUDIO in request or RATE in request:
            raise RequestError(f"give either {WAV!r} (a file's bytes) or {AUDIO!r} with {RATE!r}, not both")
        return _enhance_file_bytes(enhancer, _decode(request[WAV]), options)
    if AUDIO not in request:
        raise RequestError(f"no {AUDIO!r} (samples, with {RATE!r}) and no {WAV!r} (a file's bytes, base64) in the "
                           "request")
    if RATE not in request:
        raise RequestError(f"{AUDIO!r} needs {RATE!r} (Hz, a positive integer)")
    rate = _rate(request[RATE])
    try:
        audio = np.asarray(request[AUDIO], dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError(f"{AUDIO} must be numbers: [samples] or [[one per channel], ...]") from None
    if audio.ndim not in (1, 2) or audio.size == 0:
        raise RequestError(f"{AUDIO} must hold samples: [N] or [N][channels] with N >= 1, got shape "
                           f"{list(audio.shape)}")
    if not np.all(np.isfinite(audio)):
        raise RequestError(f"{AUDIO} contains NaN or infinite samples")
    try:
        out = enhancer.enhance(audio, rate, atten_lim_db=options.atten_lim_db, mix=options.mix,
                               high_band=options.high_band, max_piece_s=options.max_piece_s)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return {AUDIO: out, RATE: rate}


def _decode(value: Any) -> bytes:
    value = _scalar(value)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{WAV} must be a non-empty base64 string (a file's bytes)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{WAV} is not valid base64") from None


def _enhance_file_bytes(enhancer: Any, data: bytes, options: Any) -> dict[str, Any]:
    """The file's bytes through ``effifusion enhance``'s own code (runtime/files.py): the same bytes out."""
    import soundfile as sf

    from effifusion.core.errors import EffiFusionError
    from effifusion.runtime.files import enhance_file

    with tempfile.TemporaryDirectory(prefix="effifusion-serve-") as tmp:
        src = Path(tmp) / "input"
        src.write_bytes(data)
        try:
            dst = enhance_file(enhancer, src, Path(tmp) / "enhanced.wav", options, progress=False)
        except EffiFusionError as exc:
            raise RequestError(str(exc).replace(str(src), WAV)) from None
        return {WAV: base64.b64encode(dst.read_bytes()).decode("ascii"), RATE: sf.info(str(dst)).samplerate}


# ---------------------------------------------------------------------------------------------
# Logging


def requirements() -> list[str]:
    """The plain install's packages, pinned to the versions here (mlflow adds itself)."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def _code_copy(dest: Path) -> Path:
    """The torch-free part of the package under ``dest/effifusion`` (no caches): the model's code_paths."""
    package = Path(__file__).resolve().parents[1]
    root = dest / "effifusion"
    for part in CODE_PARTS:
        src = package / part
        target = root / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, target)
    return root


MODEL_CODE = """# The model MLflow loads (models from code: nothing pickled): effifusion/tracking/serving.py
import mlflow

from effifusion.tracking.serving import EnhancerModel

mlflow.models.set_model(EnhancerModel())
"""


def log_enhancer(onnx_files: list[str | Path], name: str = LOGGED_NAME, threads: int | None = None) -> Any:
    """Log ``EnhancerModel`` around the export's ONNX file(s) (the main graph first, a diffusion model's
    predictive graph beside it) to the active run; returns MLflow's ModelInfo.

    The model is logged as code (a three-line script that builds ``EnhancerModel``), not pickled.
    """
    files = [Path(f) for f in onnx_files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: ONNX file not found")
    config: dict[str, Any] = {"model_file": files[0].name}
    if threads is not None:
        config["threads"] = int(threads)
    with tempfile.TemporaryDirectory(prefix="effifusion-pyfunc-") as tmp:
        folder = Path(tmp) / ARTIFACT
        folder.mkdir()
        for f in files:
            shutil.copy2(f, folder / f.name)
        code = _code_copy(Path(tmp) / "code")
        script = Path(tmp) / "enhancer_model.py"
        script.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(script), artifacts={ARTIFACT: str(folder)}, code_paths=[str(code)],
            model_config=config, pip_requirements=requirements(),
            metadata={"input": f"{{{AUDIO!r}: [N] or [N][C], {RATE!r}: Hz}} or {{{WAV!r}: base64 file bytes}}",
                      "output": f"{{{AUDIO!r}, {RATE!r}}} or {{{WAV!r}, {RATE!r}}} (same shape, rate, format)",
                      "onnx_files": [f.name for f in files]})
