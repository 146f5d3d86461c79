"""params.yaml access: the one source of settings (no config layer on top of it).

Stages read ``load_settings()``: every value checked first (core/params.py), so a bad setting fails in
milliseconds with one line naming it, then typed (core/settings.py). Presets: presets/base.yaml
holds every setting with its documenting comments, presets/NAME.yaml only what NAME changes;
``load_preset`` merges the two, ``apply_preset`` writes the merged file (comments kept) to params.yaml,
so params.yaml always holds every value a run used and records the preset's name under ``preset``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from effifusion.core.errors import ConfigError
from effifusion.core.files import write_text

if TYPE_CHECKING:
    from effifusion.core.settings import Params

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
    """The YAML mapping in ``path``, unchecked (partial files: presets being compared, summaries).

    A preset's file (presets/NAME.yaml: changes to the base.yaml beside it) reads as the complete params
    of the preset (``merge_preset``), so code that reads a preset by its path gets every setting.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    if is_preset_file(path):
        return merge_preset(path)[1]
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


def load_settings(path: str | os.PathLike = PARAMS_FILE) -> "Params":
    """params.yaml checked (as load_params) and typed: one frozen object per section (core/settings.py)."""
    from effifusion.core.settings import parse_params

    return parse_params(read_params(path))


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


# ---- presets: presets/base.yaml + each preset's changes ------------------------------------------------
#
# presets/base.yaml holds every setting with the comments that document it (the demo's values);
# presets/NAME.yaml holds only what NAME changes. A preset's file is merged into base.yaml line by
# line, so the params.yaml that `effifusion preset NAME` writes keeps every comment. Both have a simple
# shape, checked on reading: one `key: value  # comment` per line, 2-space indents, at most three levels
# (section, key, nested key: corpus.demo.sample_rate), each value on its key's line (a scalar, [flow],
# {flow}). Every file is also parsed as YAML and must give the same mapping, so a line this reader takes
# differently is an error, never a wrong value. The rules of a preset's file (docs/presets.md):
#   - a setting's line replaces base's line as written: its value and its comment (the trailing comment
#     and the indented comment lines right below it); only a mapping's line (`train:`) written without a
#     comment keeps base's. A line may repeat base's value to give it another comment;
#   - a nested mapping (`train:` + indented keys) changes only the keys it lists; a value written on the
#     key's line ({...}, [...], a scalar) replaces the whole value;
#   - `model:` with an `arch` other than the one it starts from replaces the whole model section (each
#     architecture has its own keys);
#   - comment lines above the first setting replace base's header; comment lines above another setting
#     replace those above it in base; blank lines are not copied (base's layout is kept);
#   - `extends: NAME` starts from the preset NAME (merged) instead of base.yaml;
#   - a key base.yaml does not have is an error (a typo would otherwise change nothing, silently).

BASE_PRESET = "base"   # presets/base.yaml: the settings every preset starts from; not a preset itself
EXTENDS = "extends"    # `extends: NAME` in a preset's file: start from the preset NAME instead of base.yaml


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING = _Missing()   # preset_diff's value of a key one side lacks


def presets_dir() -> Path:
    return repo_root() / "presets"


def preset_names() -> dict[str, str | None]:
    """{name: the preset it extends, None for base.yaml} of the repository's presets, by name."""
    out: dict[str, str | None] = {}
    for path in sorted(presets_dir().glob("*.yaml"), key=lambda p: p.stem):
        if path.stem != BASE_PRESET:
            data = yaml.load(path.read_text(), Loader=_LOADER)
            out[path.stem] = data.get(EXTENDS) if isinstance(data, dict) else None
    return out


def preset_path(name_or_path: str) -> Path:
    """``presets/<name>.yaml`` of the repository (or a path to a file); ConfigError lists the presets."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    path = presets_dir() / f"{name_or_path}.yaml"
    if name_or_path == BASE_PRESET or not path.is_file():
        what = ("not found" if name_or_path != BASE_PRESET
                else f"is no preset: presets/{BASE_PRESET}.yaml holds the settings every preset starts from")
        raise ConfigError(f"preset {name_or_path!r} {what} (available: {', '.join(preset_names())})")
    return path


def is_preset_file(path: str | os.PathLike) -> bool:
    """A preset's file (changes to the base.yaml beside it) rather than a complete params file."""
    path = Path(path)
    return path.suffix == ".yaml" and path.stem != BASE_PRESET and (path.parent / f"{BASE_PRESET}.yaml").is_file()


def merge_preset(name_or_path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(text, params) of a preset: base.yaml with the preset's changes, comments kept; values unchecked.

    ``name_or_path``: a preset's name, or a path to a file of changes of the same shape. A file outside a
    presets folder changes the repository's presets/base.yaml (a complete params file changes every
    value, so it comes out as it is). A preset of a presets folder must end up with its own name in
    ``preset:``, any other must set one.
    """
    path = preset_path(str(name_or_path))
    folder = path.parent if is_preset_file(path) else presets_dir()
    settings, tail = _resolve(path, folder, ())
    text = "\n".join(_render(settings) + tail).rstrip("\n") + "\n"
    try:
        params = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{_shown(path)}: the merged params are not valid YAML ({_yaml_problem(exc)})") from None
    name = params.get("preset")
    if is_preset_file(path) and name != path.stem:
        raise ConfigError(f"{_shown(path)}: gives `preset: {name}`; a preset sets its own name "
                          f"(`preset: {path.stem}`)")
    if name == BASE_PRESET:
        raise ConfigError(f"{_shown(path)}: sets no `preset:` name (base.yaml's is {BASE_PRESET!r})")
    return text, params


def _checked_preset(name_or_path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    from effifusion.core.params import check_params

    text, params = merge_preset(name_or_path)
    try:
        return text, check_params(params)
    except ConfigError as exc:   # "params.yaml train.lr: ..." -> "presets/x.yaml: train.lr: ..."
        message = str(exc).removeprefix(f"{PARAMS_FILE} ")
        raise ConfigError(f"{_shown(preset_path(str(name_or_path)))}: {message}") from None


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A preset's complete params (base.yaml + its changes), every setting checked as load_params does."""
    return _checked_preset(name_or_path)[1]


def apply_preset(name_or_path: str, params_path: str | os.PathLike = PARAMS_FILE) -> dict[str, Any]:
    """Write a preset's complete params file (base.yaml + its changes, comments kept) to params.yaml.

    params.yaml then shows every value a run uses (DVC reads only that file). A preset that does not
    pass the full check (a bad or unknown setting, a line of another shape) is refused before params.yaml
    is touched, and the file is replaced in one rename (core/files.write_text): never half-written.
    """
    text, params = _checked_preset(name_or_path)
    write_text(Path(params_path), text)
    return params


def preset_diff(name_or_path: str | os.PathLike, params_path: str | os.PathLike = PARAMS_FILE
                ) -> list[tuple[str, Any, Any]]:
    """(flattened key, value in params_path, value the preset writes) of each setting that differs.

    A key one side lacks has the value ``MISSING`` there (a model of another architecture). Keys in
    params_path's order, a section's new keys after its others.
    """
    current = flatten(read_params(params_path))
    new = flatten(load_preset(name_or_path))
    keys = list(current) + [k for k in new if k not in current]
    sections = list(dict.fromkeys(k.split(".")[0] for k in keys))
    keys.sort(key=lambda k: sections.index(k.split(".")[0]))   # stable: a section's keys stay together
    return [(k, current.get(k, MISSING), new.get(k, MISSING)) for k in keys
            if current.get(k, MISSING) != new.get(k, MISSING)]


def yaml_value(value: Any) -> str:
    """A value as a params file writes it, on one line (``[a, b]``, ``true``, ``{}``); MISSING as "(absent)"."""
    if value is MISSING:
        return repr(MISSING)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


_MAX_INDENT = 4        # section (0), key (2), nested key (4)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # safe_load's reading, with libyaml's speed
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:[ \t]+(?P<rest>.*?))?[ \t]*$")


@dataclass
class _Setting:
    """One key of a params file as written: its line, its comment lines and, for a mapping, its keys."""

    key: str
    line: str                               # "  lr: 0.004   # comment"
    code: str                               # the line without its comment: "  lr: 0.004"
    value: str                              # the value's YAML text ("" for a nested mapping)
    comment: str                            # the trailing "# comment", or ""
    more: list[str]                         # indented comment lines below the line (its comment continued)
    above: list[str]                        # blank and comment lines above the line
    children: dict[str, _Setting] | None    # the keys of a nested mapping, in order; None for a value
    where: str                              # "presets/paper.yaml:12", for errors
    parsed: Any = None                      # the value as YAML reads it (set by _parse; a mapping's: None)

    @property
    def commented(self) -> bool:
        return bool(self.comment or self.more)


def _shown(path: Path) -> str:
    """A path as errors show it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def _split_comment(rest: str) -> tuple[str, str]:
    """("value", "# comment") of the text after ``key:``; a ``#`` inside quotes belongs to the value."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" and rest[:i].rstrip()[-1:] in ("", "[", "{", ",", ":"):
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].rstrip(), rest[i:]
    return rest.rstrip(), ""


def _parse(text: str, where: str) -> tuple[dict[str, _Setting], list[str]]:
    """The settings of a params file, in order, and the lines below the last one.

    ConfigError names the file and line of anything outside the shape described above, and of a value
    this reader would take differently from a YAML parser.
    """
    root: dict[str, _Setting] = {}
    stack: list[tuple[int, dict[str, _Setting]]] = [(0, root)]   # (indent of the keys, their mapping)
    above: list[str] = []
    last: _Setting | None = None
    for n, line in enumerate(text.splitlines(), 1):
        at = f"{where}:{n}"
        body = line.strip()
        if not body or line.startswith("#"):
            above.append(line)
            continue
        if body.startswith("#"):
            if last is None or above:
                raise ConfigError(f"{at}: an indented comment must follow a setting's line (it continues that "
                                  f"setting's comment)")
            last.more.append(line)
            continue
        m = _KEY_LINE.match(line)
        if m is None:
            raise ConfigError(f"{at}: not a `key: value` line ({body!r}); a params file holds one setting per "
                              f"line, each value on its key's line ([a, b], {{k: v}})")
        indent = len(m["indent"])
        while stack[-1][0] > indent:
            stack.pop()
        if indent != stack[-1][0] or indent > _MAX_INDENT:
            raise ConfigError(f"{at}: {m['key']!r} is not indented as a key of the mapping above it (2 spaces "
                              f"per level, at most {_MAX_INDENT // 2 + 1} levels)")
        value, comment = _split_comment(m["rest"] or "")
        code = " " * indent + f"{m['key']}:" + (f" {value}" if value else "")
        setting = _Setting(m["key"], line, code, value, comment, [], above, {} if value == "" else None, at)
        mapping = stack[-1][1]
        if setting.key in mapping:
            raise ConfigError(f"{at}: {setting.key!r} again (first at {mapping[setting.key].where})")
        mapping[setting.key] = setting
        if setting.children is not None:
            stack.append((indent + 2, setting.children))
        above, last = [], setting
    _close_empty(root)
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{_yaml_where(exc, where)}: not valid YAML ({_yaml_problem(exc)})") from None
    _read_values(root)
    _check_same(root, {} if data is None else data, where)
    return root, above


def _yaml_where(exc: yaml.YAMLError, where: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"{where}:{mark.line + 1}" if mark is not None else where


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line."""
    return str(getattr(exc, "problem", None) or " ".join(str(exc).split()))


def _close_empty(settings: dict[str, _Setting]) -> None:
    """``key:`` with nothing below it is a null value, not a mapping."""
    for s in settings.values():
        if s.children == {}:
            s.children = None
        elif s.children:
            _close_empty(s.children)


def _scalars(settings: dict[str, _Setting]) -> list[_Setting]:
    out: list[_Setting] = []
    for s in settings.values():
        out += [s] if s.children is None else _scalars(s.children)
    return out


def _read_values(settings: dict[str, _Setting]) -> None:
    """Each value read from its line alone (all in one document; one at a time to name a bad one)."""
    scalars = _scalars(settings)
    try:
        data = yaml.load("\n".join(f"v{i}: {s.value}" for i, s in enumerate(scalars)), Loader=_LOADER) or {}
        if list(data) != [f"v{i}" for i in range(len(scalars))]:
            raise yaml.YAMLError("not one value per line")
    except yaml.YAMLError:
        data = {}
        for i, s in enumerate(scalars):
            try:
                data[f"v{i}"] = yaml.load(f"v: {s.value}", Loader=_LOADER)["v"]
            except yaml.YAMLError as exc:
                raise ConfigError(f"{s.where}: the value {s.value!r} is not YAML on its own "
                                  f"({_yaml_problem(exc)})") from None
    for i, s in enumerate(scalars):
        s.parsed = data[f"v{i}"]


def _value(s: _Setting) -> Any:
    """What YAML reads for the setting: its line's value, or the mapping of its keys."""
    if s.children is not None:
        return {k: _value(c) for k, c in s.children.items()}
    return s.parsed


def _check_same(settings: dict[str, _Setting], data: Any, where: str) -> None:
    """ConfigError unless the lines, read one setting at a time, give what YAML reads from the file."""
    if not isinstance(data, dict) or list(data) != list(settings):
        raise ConfigError(f"{where}: expected a mapping of sections, one `key: value` per line")
    for key, s in settings.items():
        if s.children is not None:
            _check_same(s.children, data[key], where)
        elif _value(s) != data[key]:
            raise ConfigError(f"{s.where}: {s.key!r} reads differently on its own line than in the file")


def _comment_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.strip()]


def _replace_above(base: list[str], over: list[str]) -> list[str]:
    """The lines above a setting: base's blank lines, then the preset's comments (base's when it has none)."""
    if not _comment_lines(over):
        return base
    blank = 0
    while blank < len(base) and not base[blank].strip():
        blank += 1
    return base[:blank] + _comment_lines(over)


def _with_comment(base: _Setting, over: _Setting) -> dict[str, Any]:
    """The preset's line as written; a mapping's line (``train:``) without a comment takes base's comment.

    A value's line never inherits base's comment: base's comments often describe base's value ("6 x 20
    steps", "paper: 4; at C = 16 ..."), which would then document the preset's value wrongly.
    """
    if over.children is None or over.commented or not base.commented:
        return {"line": over.line, "comment": over.comment, "more": list(over.more)}
    if not base.comment:
        return {"line": over.code, "comment": "", "more": list(base.more)}
    column = len(base.line.rstrip()) - len(base.comment)
    code = over.code.ljust(column) if len(over.code) < column else over.code + " "
    return {"line": code + base.comment, "comment": base.comment, "more": list(base.more)}


def _new_arch(key: str, base: _Setting, over: _Setting) -> bool:
    """``model:`` of another architecture: the preset's section replaces base's whole."""
    if key != "model" or base.children is None or over.children is None or "arch" not in over.children:
        return False
    return "arch" not in base.children or _value(over.children["arch"]) != _value(base.children["arch"])


def _merge(base: dict[str, _Setting], over: dict[str, _Setting], base_name: str,
           prefix: str = "") -> dict[str, _Setting]:
    """Base's settings, in base's order, with the preset's in their place (the rules above)."""
    out = dict(base)
    for key, o in over.items():
        b = base.get(key)
        if b is None:
            raise ConfigError(f"{o.where}: {prefix}{key} is not a setting of {base_name} (a preset changes "
                              f"settings base.yaml has: a typo?)")
        fields = {"above": _replace_above(b.above, o.above), **_with_comment(b, o)}
        if o.children is not None and b.children is not None and not _new_arch(prefix + key, b, o):
            out[key] = replace(b, children=_merge(b.children, o.children, base_name, f"{prefix}{key}."), **fields)
        else:
            out[key] = replace(o, **fields)
    return out


def _render(settings: dict[str, _Setting]) -> list[str]:
    lines: list[str] = []
    for s in settings.values():
        lines += [*s.above, s.line, *s.more]
        if s.children is not None:
            lines += _render(s.children)
    return lines


def _resolve(path: Path, folder: Path, seen: tuple[Path, ...]) -> tuple[dict[str, _Setting], list[str]]:
    """(settings, lines after the last) of the preset file ``path`` merged over what it starts from."""
    where = _shown(path)
    if path.resolve() in seen:
        raise ConfigError(f"{where}: `{EXTENDS}` goes round in a circle "
                          f"({' -> '.join(_shown(p) for p in (*seen, path.resolve()))})")
    over, tail = _parse(path.read_text(), where)
    if _comment_lines(tail):
        raise ConfigError(f"{where}: comment lines below the last setting belong to no setting (put them on "
                          f"a setting's line, indented below it, or above a section)")
    header: list[str] = []
    if over:   # the comments above the first setting are the file's header
        first = next(iter(over.values()))
        header, over[first.key] = _comment_lines(first.above), replace(first, above=[])
    parent = over.pop(EXTENDS, None)
    if parent is None:
        base_path = folder / f"{BASE_PRESET}.yaml"
        if not base_path.is_file():
            raise ConfigError(f"{_shown(base_path)}: not found (every preset starts from it)")
        base, tail = _parse(base_path.read_text(), _shown(base_path))
    else:
        name = _value(parent)
        base_path = folder / f"{name}.yaml"
        if not isinstance(name, str) or "/" in name or name == BASE_PRESET or not base_path.is_file():
            raise ConfigError(f"{parent.where}: `{EXTENDS}: {name}` names no preset of {_shown(folder)} "
                              f"(without `{EXTENDS}` a preset starts from {BASE_PRESET}.yaml)")
        base, tail = _resolve(base_path, folder, (*seen, path.resolve()))
    merged = _merge(base, over, _shown(base_path))
    if header and merged:
        first = next(iter(merged.values()))
        merged[first.key] = replace(first, above=_replace_above(first.above, header))
    return merged, tail


def stage_paths(*names: str) -> dict[str, Path]:
    """The stage's paths, given on its command line in dvc.yaml (the one place they are written).

    ``stage_paths("prepared", "out")`` reads ``--prepared DIR --out DIR``; all are required.
    """
    import argparse

    parser = argparse.ArgumentParser(description="a DVC stage: its paths come from dvc.yaml's cmd")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True)
    return vars(parser.parse_args())


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
