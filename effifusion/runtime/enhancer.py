"""The Enhancer: a loaded model that enhances audio, and ONNX Runtime under it. No torch.

An exported ``.onnx`` runs in ONNX Runtime on the CPU with numpy, soundfile and onnxruntime only (the
plain install). It needs no params.yaml: the export carries its model card (onnx_model.py). A model
checkpoint ``.pt`` gives the same Enhancer through PyTorch (``effifusion.inference.load_enhancer``, the
pipeline install), so files, folders and the evaluate stage do not care which::

    from effifusion.runtime.enhancer import Enhancer
    enhancer = Enhancer.from_file("models/onnx/pruned.onnx")
    clean = enhancer.enhance(noisy, 44100)                   # [N] or [N, C] at any rate -> same shape
    clean = enhancer.enhance(noisy, 48000, atten_lim_db=12)  # remove at most 12 dB of noise
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.dsp.audio import SILENCE_PEAK
from effifusion.dsp.segments import enhance_in_segments
from effifusion.dsp.streaming import ChunkedStream, chunk_geometry
from effifusion.runtime.precision import bf16_runner, fallback, missing_feature
from effifusion.runtime.processing import MAX_PIECE_S, EnhanceOptions, EnhanceStream

PIPELINE_EXTRA = "pip install \".[pipeline]\" in a clone"


class Enhancer:
    """A loaded model (ONNX Runtime or PyTorch) that enhances audio.

    ``enhance(wav, sample_rate)`` is the API: any rate, mono or multi-channel, any length.
    ``enhance_segment(wav)`` is the model itself: one mono piece at the model's rate, whole.
    ``card`` is the model card (an export's metadata, see onnx_model.CARD_KEYS; for checkpoints the
    architecture, its config and the sample rate).
    """

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], sample_rate: int, backend: str,
                 source: str, card: dict[str, Any] | None = None):
        self._run_batch = run_batch
        self.sample_rate = int(sample_rate)
        self.backend = backend
        self.source = source
        self.card = dict(card or {"sample_rate": self.sample_rate})
        self.session: Any = None  # the ONNX Runtime session under an exported model (None in PyTorch)

    @classmethod
    def from_file(cls, model_path: str | Path, threads: int | None = None,
                  sampler: dict[str, Any] | None = None) -> "Enhancer":
        """The exported model at ``model_path`` (``load_onnx``); ``effifusion.inference.load_enhancer``
        also takes a checkpoint ``.pt``."""
        return load_onnx(model_path, threads=threads, sampler=sampler)

    def enhance(self, wav: np.ndarray, sample_rate: int | None = None, *, atten_lim_db: float | None = None,
                mix: float = 1.0, high_band: bool = True, max_piece_s: float = MAX_PIECE_S) -> np.ndarray:
        """Enhance ``wav`` ([N] or [N, C] float, any N >= 1) recorded at ``sample_rate`` (default: the
        model's) and return float32 of the same shape and rate.

        Each channel is resampled to the model's rate, enhanced (in one piece up to ``max_piece_s``,
        else in cross-faded chunks of that length) and resampled back; above the model's rate the
        input's high band is kept, scaled by the model's gain (``high_band``). ``atten_lim_db`` limits
        the noise removed (0: the input back), ``mix`` blends with the input (0: the input back):
        out = wav + mix·(1 − 10^(−atten_lim_db/20))·(enhanced − wav). Silent channels come back
        unchanged. See runtime/processing.py. With the defaults, a mono input at the model's rate
        up to ``max_piece_s`` long gives exactly ``enhance_segment(wav)``.
        """
        options = EnhanceOptions(atten_lim_db=atten_lim_db, mix=mix, high_band=high_band, max_piece_s=max_piece_s)
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim not in (1, 2) or wav.shape[0] < 1 or (wav.ndim == 2 and wav.shape[1] < 1):
            raise ValueError(f"expected a waveform [N] or [N, channels] with N >= 1, got shape {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise ValueError("waveform contains NaN or infinite samples")
        sr = self.sample_rate if sample_rate is None else sample_rate
        if not (isinstance(sr, (int, np.integer)) and not isinstance(sr, bool) and sr > 0):
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        x = wav.reshape(len(wav), -1)
        silent = np.max(np.abs(x), axis=0) < SILENCE_PEAK
        stream = EnhanceStream(self.enhance_segment, self.sample_rate, int(sr), x.shape[1], len(x), options,
                               silent)
        y = np.concatenate([stream.push(x), stream.flush()])
        return y.reshape(wav.shape)

    def enhance_segment(self, wav: np.ndarray) -> np.ndarray:
        """One segment [N] float32 at ``sample_rate`` → enhanced [N] float32 (the whole segment at once)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.shape[0] < 1:
            raise ValueError(f"expected a mono waveform [N] with N >= 1, got shape {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise ValueError("waveform contains NaN or infinite samples")
        return self._run_batch(np.ascontiguousarray(wav[None]))[0]

    def stream(self, chunk_s: float = 4.0, overlap_s: float = 1.0,
               on_chunk: Callable[[], None] | None = None) -> "ChunkedStream":
        """A push/flush stream enhancing one channel at the model's rate in cross-faded chunks (ChunkedStream)."""
        chunk, overlap = chunk_geometry(chunk_s, overlap_s, self.sample_rate)
        return ChunkedStream(self.enhance_segment, chunk, overlap, on_chunk)

    def enhance_long(self, wav: np.ndarray, chunk_s: float = 4.0, overlap_s: float = 1.0) -> np.ndarray:
        """[N] at the model's rate → [N] in chunks of ``chunk_s`` overlapping by ``overlap_s``; short
        input in one piece (the evaluate stage's fixed chunking)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono waveform [N], got shape {wav.shape}")
        stream = self.stream(chunk_s, overlap_s)
        return np.concatenate([stream.push(wav), stream.flush()])


def check_model_file(path: Path) -> Path:
    """``path`` if it is a file; ConfigError naming it otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found "
                          "(run `dvc repro export`, or pass --model FILE.onnx|.pt)")
    return path


def load_onnx(model_path: str | Path, device: str = "cpu", threads: int | None = None,
              sampler: dict[str, Any] | None = None, profile: str | None = None) -> Enhancer:
    """An Enhancer for an exported ``.onnx`` (ONNX Runtime, CPU); a ``.pt`` is refused in one line naming
    the install that runs it. ``threads``: ONNX Runtime's intra-op threads; ``sampler`` overrides a
    diffusion model's sampler settings key by key (steps, mode, seed, ...); ``profile``: a file prefix
    for ONNX Runtime's profiler (``enhancer.session.end_profiling()`` writes it; `effifusion bench --profile`)."""
    path = check_model_file(Path(model_path))
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        raise ConfigError(f"{path}: model checkpoints run in PyTorch (`{PIPELINE_EXTRA}`, then "
                          "effifusion.inference.load_enhancer); the exported .onnx model needs only the plain install")
    if suffix != ".onnx":
        raise ConfigError(f"{path}: unknown model type {path.suffix!r} (expected .onnx or a model checkpoint .pt)")
    return _onnx_enhancer(path, device, threads, sampler, profile)


def _onnx_enhancer(path: Path, device: str, threads: int | None, sampler: dict[str, Any] | None = None,
                   profile: str | None = None) -> Enhancer:
    from effifusion.runtime.onnx_model import INPUT_NAME, OUTPUT_NAME, model_card, onnx_session

    if device != "cpu":
        raise ConfigError(f"--device {device}: ONNX models run on the CPU here; "
                          f"use a model checkpoint .pt for {device}")
    session = onnx_session(path, threads, profile)  # ConfigError naming the file when it is not ONNX
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("precision", "fp32") != "fp32":  # a CPU without VNNI (int8) or bf16: its fp32 model instead
        fp32 = fallback(path, meta)
        if fp32 is not None:
            path, session = fp32, onnx_session(fp32, threads)
            meta = session.get_modelmeta().custom_metadata_map
    if meta.get("runtime") == "diffusion":  # the network alone: the sampler runs around it (diffusion/)
        from effifusion.runtime.diffusion_runtime import diffusion_run_batch

        run_batch, settings = diffusion_run_batch(path, session, meta, threads, sampler)
        return _with_session(Enhancer(run_batch, int(meta["sample_rate"]), "onnxruntime", str(path),
                                      {**model_card(meta), "sampler": settings}), session)
    if sampler:
        raise ConfigError(f"{path}: sampler settings given, but {meta.get('arch', 'this model')} has no sampler "
                          "(only the diffusion models sgmse and gp_sgmse do)")
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs or "sample_rate" not in meta:
        raise ConfigError(f"{path}: not an effifusion export (inputs {inputs}, outputs {outputs}, "
                          f"metadata keys {sorted(meta)})")

    def run_graph(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    backend = "onnxruntime"
    if meta.get("precision") == "bf16" and missing_feature("bf16") is None:  # OpenVINO (runtime/openvino_model.py)
        bf16_run = bf16_runner(path, OUTPUT_NAME, threads)
        if bf16_run is not None:
            run_graph, backend, session = bf16_run, "openvino-bf16", None
    segment = int(meta.get("segment_samples", "0") or 0)
    if not segment:
        return _with_session(Enhancer(run_graph, int(meta["sample_rate"]), backend, str(path),
                                      model_card(meta)), session)

    def run_batch(x: np.ndarray) -> np.ndarray:  # MUSE's protocol around the graph (dsp/segments.py)
        gain = np.sqrt(x.shape[-1] / (np.sum(np.square(x), axis=-1, keepdims=True) + np.float32(1e-12)))
        y = enhance_in_segments(run_graph, x * gain, segment, concat=np.concatenate,
                                pad=lambda a, k: np.pad(a, ((0, 0), (0, k))))
        return y / gain

    return _with_session(Enhancer(run_batch, int(meta["sample_rate"]), backend, str(path), model_card(meta)),
                         session)


def _with_session(enhancer: Enhancer, session: Any) -> Enhancer:
    enhancer.session = session
    return enhancer


def onnx_enhancer(path: Path, threads: int | None = None) -> Enhancer:
    """An Enhancer for the exported model at ``path`` (any file name), on ONNX Runtime's CPU."""
    return _onnx_enhancer(Path(path), "cpu", threads)
