"""params.yaml access: the one source of settings (no config layer on top of it).

Stages read their section with ``load_params()[name]``; ``load_params`` checks every value first
(core/params.py), so a bad setting fails in milliseconds with one line naming it. Presets in ``presets/`` are partial
params files; ``apply_preset`` merges one into params.yaml so the file always holds every value
a run used, and records the preset's name under ``preset``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from effifusion.core.errors import ConfigError
from effifusion.core.files import write_text

PARAMS_FILE = "params.yaml"


def repo_root() -> Path:
    """The repository root: DVC_ROOT inside DVC runs (also queued experiments), else by search."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file() or (d / ".git").exists():
            return d
    return here


def read_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """The YAML mapping in ``path``, unchecked (partial files: presets being compared, summaries)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def load_params(path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml, every setting checked (core/params.py) before the caller does any work."""
    from effifusion.core.params import check_params

    return check_params(read_params(path))


def params_hash(params: dict[str, Any]) -> str:
    """Short stable hash of resolved params (tags MLflow runs so equal configs are findable)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (MLflow params, DVC's -S names)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def preset_path(name_or_path: str) -> Path:
    """``presets/<name>.yaml`` of the repository (or a path to a params file); ConfigError lists the presets."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    path = repo_root() / "presets" / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (repo_root() / "presets").glob("*.yaml"))
        raise ConfigError(f"preset {name_or_path!r} not found (available: {', '.join(available)})")
    return path


def check_params_of(path: Path) -> dict[str, Any]:
    """load_params with the file named in the error (a preset with a bad value is refused whole)."""
    try:
        return load_params(path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def apply_preset(name_or_path: str, params_path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """Copy ``presets/<name>.yaml`` (or a path) over params.yaml and return its params.

    Presets are complete params files, comments included, so params.yaml always shows every
    value a run used. A preset that does not pass the full check (a missing, unknown or bad
    setting) is refused before params.yaml is touched.
    """
    preset_file = preset_path(name_or_path)
    preset = check_params_of(preset_file)
    write_text(Path(params_path), preset_file.read_text())
    return preset


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user-fixable error becomes one line on stderr and exit 2.

    SIGTERM (``kill``, a scheduler's time limit) raises SystemExit, so open MLflow runs are closed
    as FAILED and temporary files removed on the way out instead of being left behind.
    """
    import signal
    import sys

    from effifusion.core.errors import user_message

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        main()
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        stage = Path(sys.argv[0]).stem
        print(f"stage {stage}: error: {message}", file=sys.stderr)
        sys.exit(2)
