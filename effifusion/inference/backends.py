"""Inference backends: a loaded model that enhances 16 kHz mono waveforms.

An exported ``.onnx`` runs in ONNX Runtime on the CPU; a model checkpoint ``.pt`` runs in PyTorch
(CPU or CUDA) and needs no params.yaml (checkpoints describe their model). Both give an
``Enhancer`` with the same interface, so files, folders and the evaluate stage do not care which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.dsp.streaming import ChunkedStream, chunk_geometry


class Enhancer:
    """A loaded model that enhances 16 kHz mono float32 waveforms (ONNX Runtime or PyTorch)."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], sample_rate: int, backend: str,
                 source: str):
        self._run_batch = run_batch
        self.sample_rate = int(sample_rate)
        self.backend = backend
        self.source = source

    def enhance(self, wav: np.ndarray) -> np.ndarray:
        """One segment [N] float32 at ``sample_rate`` → enhanced [N] float32 (the whole segment at once)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1 or wav.shape[0] < 1:
            raise ValueError(f"expected a mono waveform [N] with N >= 1, got shape {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise ValueError("waveform contains NaN or infinite samples")
        return self._run_batch(np.ascontiguousarray(wav[None]))[0]

    def stream(self, chunk_s: float = 4.0, overlap_s: float = 1.0,
               on_chunk: Callable[[], None] | None = None) -> "ChunkedStream":
        """A push/flush stream enhancing one channel in cross-faded chunks (see ChunkedStream)."""
        chunk, overlap = chunk_geometry(chunk_s, overlap_s, self.sample_rate)
        return ChunkedStream(self.enhance, chunk, overlap, on_chunk)

    def enhance_long(self, wav: np.ndarray, chunk_s: float = 4.0, overlap_s: float = 1.0) -> np.ndarray:
        """[N] → [N] in chunks of ``chunk_s`` overlapping by ``overlap_s``; short input in one piece."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"expected a mono waveform [N], got shape {wav.shape}")
        stream = self.stream(chunk_s, overlap_s)
        return np.concatenate([stream.push(wav), stream.flush()])


def load_enhancer(model_path: str | Path, device: str = "cpu", threads: int | None = None) -> Enhancer:
    """An Enhancer for an exported ``.onnx`` (ONNX Runtime, CPU) or a model checkpoint ``.pt`` (PyTorch).

    ``threads`` sets ONNX Runtime's intra-op threads, or torch.set_num_threads for checkpoints
    (process-wide). A missing or unreadable model (random bytes, text, a .pt that is no checkpoint, an
    ONNX graph that is no effifusion export) is a ConfigError naming the file and the problem.
    """
    path = Path(model_path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found "
                          "(run `dvc repro export`, or pass --model FILE.onnx|.pt)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx_enhancer(path, device, threads)
    if suffix in (".pt", ".pth"):
        return _torch_enhancer(path, device, threads)
    raise ConfigError(f"{path}: unknown model type {path.suffix!r} (expected .onnx or a model checkpoint .pt)")


def _onnx_enhancer(path: Path, device: str, threads: int | None) -> Enhancer:
    from effifusion.inference.export import INPUT_NAME, OUTPUT_NAME, onnx_session

    if device != "cpu":
        raise ConfigError(f"--device {device}: ONNX models run on the CPU here; "
                          f"use a model checkpoint .pt for {device}")
    session = onnx_session(path, threads)  # ConfigError naming the file when it is not ONNX
    meta = session.get_modelmeta().custom_metadata_map
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs or "sample_rate" not in meta:
        raise ConfigError(f"{path}: not an effifusion export (inputs {inputs}, outputs {outputs}, "
                          f"metadata keys {sorted(meta)})")

    def run_batch(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    return Enhancer(run_batch, int(meta["sample_rate"]), "onnxruntime", str(path))


def _torch_enhancer(path: Path, device: str, threads: int | None) -> Enhancer:
    import torch

    from effifusion.models.registry import load_checkpoint

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if threads:
        torch.set_num_threads(int(threads))
    model, _ = load_checkpoint(path, map_location=device)

    def run_batch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.enhance(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return Enhancer(run_batch, model.sample_rate, "pytorch", str(path))
