"""`effifusion enhance`: run the exported model (or a checkpoint) over audio files of any length and rate.

The model sees 16 kHz mono pieces only. A file is streamed through processing.EnhanceStream (the
code path of ``Enhancer.enhance`` too): read in blocks at its own rate, resampled to 16 kHz (exactly
as ``audio.resample`` would do on the whole file), enhanced in one piece when it is at most
``max_piece_s`` (default 60 s) long, else in chunks of that length joined by 1 s raised-cosine
cross-fades, resampled back, given back its band above 8 kHz scaled by the model's gain (44.1/48 kHz
input, unless turned off), limited / mixed with the input, and written block by block to a
temporary file that replaces the output at the end. Memory stays bounded by the piece length
whatever the file's duration, rate or channel count; each channel is enhanced on its own.

Attention in the TS-Conformer is global over a piece: with the attention of the original model,
memory grows with the square of the piece length (docs/reference.md §7; measured peak for one piece,
bench/bench_infer.py, demo and paper configs: 10 s 8.6-9.4 GB in ONNX Runtime, 4.2 GB in PyTorch;
4 s 1.4-1.8 GB and 0.8-1.2 GB). The 60 s default assumes attention in bounded memory (the model
card's ``memory_mb_per_s``); ``--max-piece-s 4`` bounds memory with the original attention.

Formats: any file libsndfile reads (WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF, ...). Folders take
every file whose extension is such a format (AUDIO_SUFFIXES) and say in one line how many other
files they skipped; hidden files and folders are ignored. The output keeps the input's container
and, where libsndfile can write it, its subtype (else PCM_16 or the container's default); when the
container cannot be written at all, or the name's extension does not fit the container, the
output is named for what it holds (a warning says so), never WAV bytes under ``.ogg``.

Problems: silent input (peak below ``audio.SILENCE_PEAK``, -80 dBFS) is legitimate in a recording and
there is nothing to enhance: silent files and silent channels are written unchanged, with a warning.
A WAV cut short inside its data is enhanced as far as it goes, with a warning giving both lengths.
Unreadable and empty files fail with an AudioError naming the file. With several files, a file that
fails does not stop the others: every file is attempted, the good ones are finished, then each
failure is printed as one line (``<path>: <problem>``) and FilesFailed ("K of N files failed") is
raised. An output folder that cannot be written, ``-o`` naming a file, and an unusable model fail
in one line before any file is read.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from tqdm import tqdm

from effifusion.core.errors import AudioError, DataError, EffiFusionError, FilesFailed, say
from effifusion.core.files import atomic_path, check_writable_dir
from effifusion.dsp.audio import SILENCE_PEAK, wav_truncation
from effifusion.runtime.enhancer import Enhancer, load_onnx
from effifusion.runtime.processing import EnhanceOptions, EnhanceStream

READ_BLOCK_S = 2.0  # seconds of input read per step while streaming a file
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # written unclipped; every other subtype is clipped to [-1, 1]
# Extensions folders take: libsndfile's format names plus the usual aliases. RAW is left out: a
# header-less file cannot be read without being told its rate, channels and sample format.
SUFFIX_ALIASES = {".aif": "AIFF", ".aifc": "AIFF", ".oga": "OGG", ".opus": "OGG", ".snd": "AU",
                  ".sph": "NIST", ".wav": ("WAV", "WAVEX", "RF64", "NIST")}  # TIMIT's NIST files are .WAV


def _suffix_formats() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {f".{fmt.lower()}": {fmt} for fmt in sf.available_formats() if fmt != "RAW"}
    for suffix, fmts in SUFFIX_ALIASES.items():
        table.setdefault(suffix, set()).update((fmts,) if isinstance(fmts, str) else fmts)
    return {suffix: frozenset(fmts) for suffix, fmts in table.items()}


SUFFIX_FORMATS = _suffix_formats()  # extension -> the containers a file of that name may hold
AUDIO_SUFFIXES = frozenset(SUFFIX_FORMATS)


def _open_input(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    if f.frames <= 0:
        f.close()
        raise AudioError(f"{path}: contains no samples")
    return f


def _read_blocks(f: sf.SoundFile, path: Path, block: int):
    f.seek(0)
    while True:
        try:
            x = f.read(frames=block, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            raise AudioError(f"{path}: read error ({exc})") from None
        if len(x) == 0:
            return
        yield x


def _scan(f: sf.SoundFile, path: Path, block: int) -> np.ndarray:
    """Per-channel peak over the whole file (one streaming pass); AudioError on NaN / inf."""
    peak = np.zeros(f.channels, np.float64)
    for x in _read_blocks(f, path, block):
        if not np.all(np.isfinite(x)):
            raise AudioError(f"{path}: contains NaN or infinite samples")
        peak = np.maximum(peak, np.abs(x).max(axis=0))
    return peak


@lru_cache(maxsize=256)
def _writable(fmt: str, subtype: str, samplerate: int, channels: int) -> bool:
    """Whether libsndfile writes this combination (tried in memory: some containers limit rates or channels)."""
    if not subtype or not sf.check_format(fmt, subtype):
        return False
    try:
        with sf.SoundFile(io.BytesIO(), "w", samplerate=samplerate, channels=channels, format=fmt,
                          subtype=subtype):
            return True
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        return False


def output_plan(fmt: str, subtype: str, samplerate: int, channels: int, dst: Path
                ) -> tuple[str, str, Path, str | None]:
    """(format, subtype, path, note) for an input of ``fmt``/``subtype`` meant to be written to ``dst``.

    The input's container, with its subtype where writable, else PCM_16 or the container's default;
    WAV when the container cannot be written at all. The path's extension is changed when it does
    not fit the container written (``note`` then says why), so the name never lies about the bytes.
    """
    out_fmt = out_subtype = None
    for candidate in dict.fromkeys((subtype, "PCM_16", sf.default_subtype(fmt))):
        if candidate and _writable(fmt, candidate, samplerate, channels):
            out_fmt, out_subtype = fmt, candidate
            break
    note = None
    if out_fmt is None:
        out_fmt = "WAV"
        out_subtype = subtype if _writable("WAV", subtype, samplerate, channels) else "PCM_16"
        note = f"{fmt} files of {samplerate} Hz, {channels} channel(s) cannot be written; written as WAV"
    if out_fmt not in SUFFIX_FORMATS.get(dst.suffix.lower(), ()):
        suffix = ".wav" if out_fmt in ("WAV", "WAVEX", "RF64") else f".{out_fmt.lower()}"
        renamed = dst.with_name(dst.stem + suffix)
        note = f"{note or f'holds {fmt} audio'}; output named {renamed.name}"
        dst = renamed
    return out_fmt, out_subtype, dst, note


def _warn(message: str) -> None:
    say("enhance", "warning", message)


def enhance_file(enhancer: Enhancer, src: Path, dst: Path, options: EnhanceOptions | None = None,
                 progress: bool = True, *, chunk_s: float | None = None) -> Path:
    """Enhance one audio file into ``dst`` and return the path written: ``dst``, or ``dst`` with the
    extension of the container written where the two differ (see ``output_plan``).

    Same rate, channels and length as the input; container and subtype kept where writable.
    ``options`` (EnhanceOptions) as for ``Enhancer.enhance``; ``chunk_s``, the old name of
    ``options.max_piece_s``, overrides it when given.
    """
    src, dst = Path(src), Path(dst)
    options = _options(options, chunk_s)
    with _open_input(src) as f:
        sr, channels, frames = f.samplerate, f.channels, f.frames
        cut = wav_truncation(src)
        if cut:
            _warn(f"{src}: cut short: header says {cut[0]} frames, file holds {cut[1]}; "
                  f"enhanced the {cut[1]} present")
        block = max(1, int(READ_BLOCK_S * sr))
        silent = _scan(f, src, block) < SILENCE_PEAK
        if silent.all():
            _warn(f"{src}: silent (peak below {SILENCE_PEAK:g}); written unchanged")
        elif silent.any():
            _warn(f"{src}: channel(s) {', '.join(str(c + 1) for c in np.flatnonzero(silent))} silent; "
                  "written unchanged")
        fmt, subtype, dst, note = output_plan(f.format, f.subtype, sr, channels, dst)
        if note:
            _warn(f"{src}: {note}")
        try:
            with atomic_path(dst) as tmp:
                with sf.SoundFile(str(tmp), "w", samplerate=sr, channels=channels, subtype=subtype,
                                  format=fmt) as out:
                    writer = _Writer(out, frames, subtype not in FLOAT_SUBTYPES)
                    _enhance_stream(enhancer, f, src, block, silent, options, writer, progress)
                    writer.finish()
        except (OSError, sf.LibsndfileError) as exc:  # a full disk, a file where a subfolder should be
            raise DataError(f"{src}: cannot write {dst} ({getattr(exc, 'strerror', None) or exc})") from None
    return dst


def _options(options: EnhanceOptions | None, chunk_s: float | None) -> EnhanceOptions:
    options = options or EnhanceOptions()
    return options if chunk_s is None else replace(options, max_piece_s=chunk_s)


class _Writer:
    """Writes exactly ``frames`` frames: crops the resampling round trip's extra samples, clips PCM."""

    def __init__(self, out: sf.SoundFile, frames: int, clip: bool):
        self.out, self.frames, self.clip, self.written = out, frames, clip, 0

    def write(self, y: np.ndarray) -> None:
        y = y[: self.frames - self.written]
        if len(y):
            self.out.write(np.clip(y, -1.0, 1.0) if self.clip else y)
            self.written += len(y)

    def finish(self) -> None:
        if self.written < self.frames:  # the round trip never comes out short; pad defensively
            self.write(np.zeros((self.frames - self.written, self.out.channels), np.float32))


def _enhance_stream(enhancer: Enhancer, f: sf.SoundFile, src: Path, block: int, silent: np.ndarray,
                    options: EnhanceOptions, writer: _Writer, progress: bool) -> None:
    """The file through an EnhanceStream (processing.py) block by block: resampling, one piece or
    cross-faded chunks per channel, high band, limit and mix; silent channels pass through."""
    bar = None

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    stream = EnhanceStream(enhancer.enhance_segment, enhancer.sample_rate, f.samplerate, f.channels, f.frames,
                           options, silent, on_chunk=tick)
    bar = tqdm(total=stream.n_chunks, unit="chunk", desc=src.name, leave=False,
               disable=not progress or stream.n_chunks < 2)
    try:
        for x in _read_blocks(f, src, block):
            writer.write(stream.push(x))
        writer.write(stream.flush())
    finally:
        bar.close()


def _collect(inputs: list[str], output: Path) -> list[tuple[Path, Path]]:
    """(source, destination) pairs: files map to output/<name>, folders to output/<path inside the folder>.

    Folders are searched recursively for AUDIO_SUFFIXES, leaving out hidden files and folders and the
    output folder; the other files are counted in one warning line per folder.
    """
    out_root = output.resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, skipped = _scan_folder(p, out_root)
            plural = len(skipped) > 1
            if not found:
                other = f" ({len(skipped)} other file{'s' if plural else ''})" if skipped else ""
                raise DataError(f"{p}: no audio files in this folder{other}")
            if skipped:
                kinds = sorted({q.suffix.lower() or "no extension" for q in skipped})
                _warn(f"{p}: skipped {len(skipped)} file{'s' if plural else ''} that {'are' if plural else 'is'} "
                      f"not audio ({', '.join(kinds[:6])}{', ...' if len(kinds) > 6 else ''})")
            pairs += [(q, output / q.relative_to(p)) for q in found]
        elif p.is_file():
            pairs.append((p, output / p.name))
        else:
            raise AudioError(f"{p}: file or folder not found")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        dst = _planned_path(src, dst)
        key = dst.resolve()
        if key == src.resolve():
            raise DataError(f"{src}: output {dst} would overwrite the input (choose another -o folder)")
        if key in seen:
            raise DataError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
    return pairs


def _scan_folder(folder: Path, out_root: Path) -> tuple[list[Path], list[Path]]:
    """(audio files, other files) below ``folder``, sorted; hidden entries and ``out_root`` left out."""
    found, skipped = [], []
    for here, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and Path(here, d).resolve() != out_root]
        for name in names:
            q = Path(here, name)
            if name.startswith(".") or not q.is_file():
                continue
            (found if q.suffix.lower() in AUDIO_SUFFIXES else skipped).append(q)
    return sorted(found), sorted(skipped)


def _planned_path(src: Path, dst: Path) -> Path:
    """The path enhance_file will write for ``src`` (the extension may change); ``dst`` if unreadable."""
    try:
        info = sf.info(str(src))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
        return dst  # enhance_file reports the problem with this file
    return output_plan(info.format, info.subtype, info.samplerate, info.channels, dst)[2]


def enhance_paths(inputs: list[str], output: str, model: str | Path, options: EnhanceOptions | None = None,
                  device: str = "cpu", quiet: bool = False, *, chunk_s: float | None = None,
                  sampler: dict | None = None, load: Callable[..., Enhancer] = load_onnx) -> list[Path]:
    """Enhance files and folders (recursively, every audio format) into ``output``; return the written paths.

    Files keep their name, folders their structure below the folder. Every file keeps its sample
    rate, channel count, length, container and (where writable) sample format. ``options``
    (EnhanceOptions: attenuation limit, mix, high band, longest piece; ``chunk_s`` is the old name of
    ``max_piece_s``) apply to every file. The output folder and the model are checked before any file
    is read; with several files each is attempted, failures are printed one line each after the
    others are done, and FilesFailed is raised. Success prints nothing but progress bars; ``quiet``
    turns those off too (warnings and errors are still printed). ``load`` opens ``model`` once the paths are
    checked: this runtime's ``load_onnx`` by default; ``effifusion.inference.load_enhancer`` (what the command
    passes) opens a checkpoint ``.pt`` too.
    """
    options = _options(options, chunk_s)  # a bad option fails here, before any work
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; -o takes a folder")
    pairs = _collect(list(inputs), out)
    check_writable_dir(out, "output folder")
    enhancer = load(model, device=device, sampler=sampler)  # sampler: diffusion models' overrides
    progress = not quiet
    if len(pairs) == 1:  # one file: its error is the command's error
        return [enhance_file(enhancer, *pairs[0], options, progress)]
    written = []
    failures: list[tuple[str, str]] = []
    for src, dst in tqdm(pairs, unit="file", desc="enhance", disable=quiet):
        try:
            written.append(enhance_file(enhancer, src, dst, options, progress))
        except EffiFusionError as exc:
            failures.append((str(src), str(exc)))
        except Exception as exc:  # an unforeseen failure on one file must not cost the others
            failures.append((str(src), f"{type(exc).__name__}: {exc}"))
    if failures:
        for src, message in failures:
            say("enhance", "error", message if message.startswith(f"{src}:") else f"{src}: {message}")
        raise FilesFailed(f"{len(failures)} of {len(pairs)} files failed (listed above); the other "
                          f"{len(written)} were written to {out}", failures, written)
    return written
