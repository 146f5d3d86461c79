"""VoiceBank+DEMAND: fetch the official zips (or take a local copy) and lay out ``data/raw``.

Sources (docs/reference.md §4): Edinburgh DataShare 10283/2791 (VoiceBank+DEMAND, CC BY 4.0) and the
five DEMAND environments VoiceBank never used (Zenodo 1227121, CC BY-SA 3.0), which the
``mix_unseen`` stage mixes into the test speech. The result has the layout every later stage
relies on (see the data layout contract), built in a temporary sibling folder and renamed into
place only once complete and validated.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from effifusion.core.errors import DataError, DownloadError
from effifusion.core.settings import DownloadConfig, as_settings
from effifusion.data.download import extract_zip, fetch, md5sum, replace_path


@dataclass(frozen=True)
class CorpusFile:
    """One published zip and where its content goes under ``data/raw``."""

    name: str            # file name on the server (and in download.local_copy)
    url_key: str         # the download setting holding its base URL: datashare_url | zenodo_url
    size: int | None     # bytes; None where the publisher gives no exact size
    md5: str
    target: str          # VoiceBank folder name, "logfiles" or "demand/<ENV>"


LOG_FILES = ("log_trainset_28spk.txt", "log_testset.txt")
UNSEEN_ENVS = ("DWASHING", "NFIELD", "NPARK", "NRIVER", "OHALLWAY")

VOICEBANK_FILES = (
    CorpusFile("clean_trainset_28spk_wav.zip", "datashare_url", 2_486_057_279,
               "d2d5a45ec32f8fcbf201bde0447e20ba", "clean_trainset_28spk_wav"),
    CorpusFile("noisy_trainset_28spk_wav.zip", "datashare_url", 2_830_205_201,
               "1fca9e8bafb8cd069f6653c6d92f9e9c", "noisy_trainset_28spk_wav"),
    CorpusFile("clean_testset_wav.zip", "datashare_url", None,
               "34eb1c0ba7ef667e9b966866c542fc16", "clean_testset_wav"),
    CorpusFile("noisy_testset_wav.zip", "datashare_url", None,
               "fb1b86caa31e8ba5b506c0c64da9aab5", "noisy_testset_wav"),
    CorpusFile("logfiles.zip", "datashare_url", 115_932, "0d16f5b6afe12d64238d1e4a0e6ff6e8", "logfiles"),
)
DEMAND_FILES = (
    CorpusFile("DWASHING_16k.zip", "zenodo_url", 102_343_250, "7e5ee9437ce9409c5f9a779b6212a240",
               "demand/DWASHING"),
    CorpusFile("NFIELD_16k.zip", "zenodo_url", 86_536_782, "a740046c6f4e174e16f5d568aaec5024",
               "demand/NFIELD"),
    CorpusFile("NPARK_16k.zip", "zenodo_url", 86_029_332, "80f1385a34d7f1705758926b57f138ce",
               "demand/NPARK"),
    CorpusFile("NRIVER_16k.zip", "zenodo_url", 98_689_565, "54264db61d3fe073fb81f2e40e0d19b5",
               "demand/NRIVER"),
    CorpusFile("OHALLWAY_16k.zip", "zenodo_url", 77_941_854, "fe918bbb0e63e73d09ba7f4843ef33f1",
               "demand/OHALLWAY"),
)
FILES: tuple[CorpusFile, ...] = VOICEBANK_FILES + DEMAND_FILES

SEARCH_DEPTH = 3  # folder levels searched in download.local_copy and inside unpacked zips
SOURCE = ("VoiceBank+DEMAND, Edinburgh DataShare 10283/2791 (CC BY 4.0); "
          "DEMAND unseen environments, Zenodo 1227121 (CC BY-SA 3.0)")


def _is_junk(path: Path) -> bool:
    return path.name == "__MACOSX" or path.name.startswith("._") or path.name == ".DS_Store"


def _walk_dirs(root: Path, max_depth: int = SEARCH_DEPTH):
    """Folders under ``root`` (itself included), breadth first, at most ``max_depth`` levels down."""
    queue = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        yield folder
        if depth < max_depth:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not _is_junk(p))
            except OSError:
                continue
            queue.extend((c, depth + 1) for c in children)


def _find_file(root: Path, name: str) -> Path | None:
    for folder in _walk_dirs(root):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_wavs(folder: Path) -> bool:
    return any(p.suffix.lower() == ".wav" and not _is_junk(p) for p in folder.iterdir())


def _find_dir(root: Path, name: str, must_contain: str | None = None) -> Path | None:
    """First folder called ``name`` holding WAV files (and ``must_contain`` when given)."""
    for folder in _walk_dirs(root):
        if folder.name != name or not _has_wavs(folder):
            continue
        if must_contain is None or (folder / must_contain).is_file():
            return folder
    return None


def _locate(file: CorpusFile, root: Path, *, unpacked_zip: bool) -> list[tuple[Path, str]]:
    """(source path, target under raw) pairs for ``file``'s content inside ``root``; [] when absent.

    Inside an unpacked zip the nesting is taken as it comes (a zip holding the WAV files at its
    root, or a DEMAND zip whose folder has another name); in download.local_copy only folders
    with the official names count, so unrelated folders are never picked up.
    """
    if file.target == "logfiles":
        logs = [_find_file(root, name) for name in LOG_FILES]
        return [(p, f"logfiles/{p.name}") for p in logs] if all(logs) else []
    if file.target.startswith("demand/"):
        env = file.target.split("/", 1)[1]
        found = _find_dir(root, env, must_contain="ch01.wav")
        if found is None and unpacked_zip:
            ch01 = _find_file(root, "ch01.wav")
            found = ch01.parent if ch01 is not None else None
        return [(found, file.target)] if found is not None else []
    found = _find_dir(root, file.target)
    if found is None and unpacked_zip and _has_wavs(root):
        found = root
    return [(found, file.target)] if found is not None else []


def _link_or_copy_tree(src: Path, dst: Path) -> tuple[int, int]:
    """Hard-link (else copy) the files of ``src`` into ``dst``; returns (linked, copied)."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file() and not _is_junk(p))
    linked = copied = 0
    for path in tqdm(files, desc=f"link {src.name}", unit="file", disable=len(files) < 100,
                     dynamic_ncols=True):
        target = dst if src.is_file() else dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
            linked += 1
        except OSError:  # other filesystem, or links not allowed: copy instead
            shutil.copy2(path, target)
            copied += 1
    return linked, copied


def _local_copy(cfg: DownloadConfig) -> Path | None:
    """``download.local_copy`` as a folder (None when empty); DataError when it names no folder."""
    if not cfg.local_copy.strip():
        return None
    local_copy = Path(cfg.local_copy).expanduser()
    if not local_copy.is_dir():
        raise DataError(f"params.yaml download.local_copy = {cfg.local_copy!r}: folder {local_copy} not found "
                        f"(give the folder holding the zips or the extracted folders, or \"\" to download)")
    return local_copy


def _resolve_source(file: CorpusFile, cfg: DownloadConfig, local_copy: Path | None, downloads_dir: Path, *,
                    backoff_s: float, progress: bool) -> dict[str, Any]:
    """Where ``file`` comes from: a zip (local, verified, or downloaded) or an extracted local folder."""
    if local_copy is not None:
        local_zip = _find_file(local_copy, file.name)
        if local_zip is not None:
            actual = md5sum(local_zip)
            if actual != file.md5:
                raise DownloadError(f"{local_zip}: md5 {actual}, expected {file.md5} (download.local_copy); "
                                    f"replace the file with a good copy, or remove it to download instead")
            print(f"{file.name}: local copy {local_zip} (md5 ok)", flush=True)
            return {"zip": local_zip, "origin": str(local_zip)}
        located = _locate(file, local_copy, unpacked_zip=False)
        if located:
            print(f"{file.name}: extracted local copy {located[0][0]}", flush=True)
            return {"folder": located, "origin": str(located[0][0])}
        print(f"{file.name}: not in download.local_copy {local_copy}; downloading it", flush=True)
    url = f"{getattr(cfg, file.url_key).rstrip('/')}/{file.name}"
    print(f"{file.name}: {url}", flush=True)
    path = fetch(url, downloads_dir / file.name, md5=file.md5, size=file.size, retries=cfg.retries,
                 timeout_s=cfg.timeout_s, backoff_s=backoff_s, progress=progress)
    return {"zip": path, "origin": url}


def _place(file: CorpusFile, source: dict[str, Any], staging: Path, *, progress: bool = True) -> None:
    """Put ``file``'s content at its target under ``staging`` (moved from an unpacked zip, or
    hard-linked from an extracted local copy)."""
    if "folder" in source:
        for src, target in source["folder"]:
            _link_or_copy_tree(src, staging / target)
        return
    unpack = staging / ".unpack" / Path(file.name).stem
    extract_zip(source["zip"], unpack, progress=progress)
    located = _locate(file, unpack, unpacked_zip=True)
    if not located:
        raise DataError(f"{source['zip']}: expected {_describe(file)} inside the archive, found none")
    for src, target in located:
        (staging / target).parent.mkdir(parents=True, exist_ok=True)
        replace_path(src, staging / target)
    shutil.rmtree(unpack, ignore_errors=True)


def _describe(file: CorpusFile) -> str:
    if file.target == "logfiles":
        return " and ".join(LOG_FILES)
    if file.target.startswith("demand/"):
        return f"a folder {file.target.split('/', 1)[1]}/ with ch01.wav"
    return f"a folder {file.target}/ with .wav files"


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if line.strip())


def _validate(staging: Path, raw_dir: Path, files: tuple[CorpusFile, ...]) -> dict[str, Any]:
    """Check the built layout (every target present, non-empty, clean/noisy names paired); counts."""
    counts: dict[str, Any] = {}
    for file in files:
        folder = staging / file.target
        if file.target == "logfiles":
            for name in LOG_FILES:
                log = folder / name
                if not log.is_file() or log.stat().st_size == 0:
                    raise DataError(f"{raw_dir / 'logfiles' / name}: missing or empty (from {file.name})")
                counts[Path(name).stem] = _count_lines(log)
        elif file.target.startswith("demand/"):
            channels = sorted(folder.glob("ch*.wav")) if folder.is_dir() else []
            if not (folder / "ch01.wav").is_file():
                raise DataError(f"{raw_dir / file.target}/ch01.wav: missing (from {file.name})")
            counts.setdefault("demand", {})[file.target.split("/", 1)[1]] = len(channels)
        else:
            wavs = sorted(folder.glob("*.wav")) if folder.is_dir() else []
            if not wavs:
                raise DataError(f"{raw_dir / file.target}: missing or without .wav files (from {file.name})")
            counts[file.target] = len(wavs)
    for clean in [f.target for f in files if f.target.startswith("clean_")]:
        noisy = "noisy_" + clean[len("clean_"):]
        if noisy not in counts:
            continue
        clean_names = {p.name for p in (staging / clean).glob("*.wav")}
        noisy_names = {p.name for p in (staging / noisy).glob("*.wav")}
        if clean_names != noisy_names:
            only = sorted(clean_names ^ noisy_names)
            raise DataError(f"{raw_dir / clean} and {raw_dir / noisy}: {len(only)} files are in only one "
                            f"of them (e.g. {', '.join(only[:5])}); the archives are incomplete: delete them "
                            f"from the download cache or local copy and run again")
    return counts


def fetch_voicebank_demand(raw_dir: Path, download_cfg: DownloadConfig | dict[str, Any], downloads_dir: Path, *,
                           backoff_s: float = 2.0, progress: bool = True) -> dict:
    """Build ``raw_dir`` from the VoiceBank+DEMAND zips and the unseen DEMAND environments.

    Each zip comes from ``download.local_copy`` when that folder holds it (md5-checked) or
    its extracted folder (hard-linked, no network), else from the DataShare / Zenodo URL, cached
    in ``downloads_dir`` (outside DVC's outputs, so partial downloads survive to resume). All
    files are fetched before anything is extracted; the layout is built in a temporary sibling
    of ``raw_dir``, validated, then renamed over ``raw_dir``. Returns the ``corpus.json`` dict.
    """
    raw_dir, downloads_dir = Path(raw_dir), Path(downloads_dir)
    download_cfg = as_settings(download_cfg, DownloadConfig)
    local_copy = _local_copy(download_cfg)
    files = FILES
    sources = {f.name: _resolve_source(f, download_cfg, local_copy, downloads_dir, backoff_s=backoff_s,
                                       progress=progress) for f in files}

    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    for pattern in (f".{raw_dir.name}.tmp-*", f".{raw_dir.name}.old-*"):  # left by an interrupted run
        for stale in raw_dir.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    staging = raw_dir.parent / f".{raw_dir.name}.tmp-{os.getpid()}"
    staging.mkdir()
    try:
        for file in files:
            _place(file, sources[file.name], staging, progress=progress)
        shutil.rmtree(staging / ".unpack", ignore_errors=True)
        counts = _validate(staging, raw_dir, files)
        corpus = {
            "name": "voicebank_demand",
            "source": SOURCE,
            "local_copy": str(local_copy) if local_copy else None,
            "counts": counts,
            "files": [{"name": f.name, "md5": f.md5, "origin": sources[f.name]["origin"]} for f in files],
        }
        (staging / "corpus.json").write_text(json.dumps(corpus, indent=2) + "\n")
        replace_path(staging, raw_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "demand")
    print(f"{raw_dir}: {summary}, DEMAND {', '.join(counts.get('demand', {}))}", flush=True)
    return corpus
