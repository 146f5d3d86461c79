"""dvc.yaml cannot drift from the code: every project module a stage script imports is a declared dep.

A stage whose deps miss a module it runs is not rerun when that module changes (editing the STFT
front end would not retrain), so the walk below follows every import statement of the stage script
(function-level imports too) through the effifusion package and fails on an undeclared module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return {n for n in names if n == "effifusion" or n.startswith("effifusion.")}


def _has_code(path: Path) -> bool:
    """False for an __init__.py holding only a docstring and constants such as __version__."""
    body = ast.parse(path.read_text()).body
    return any(not isinstance(n, (ast.Expr, ast.Assign)) for n in body)


def project_files(script: Path) -> set[Path]:
    """Every effifusion source file the script runs, with the package __init__ files on the way."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in _imported_modules(todo.pop()):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                f = _module_file(".".join(parts[:i]))
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return {f for f in seen if f.name != "__init__.py" or _has_code(f)}


def _covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_declares_every_module_it_imports(stage):
    spec = STAGES[stage]
    script = ROOT / spec["cmd"].split()[1]  # python stages/<stage>.py --path ...
    assert script.is_file(), f"{stage}: cmd {spec['cmd']!r} does not name a script"
    deps = [ROOT / d for d in spec["deps"]]
    assert ROOT / script.relative_to(ROOT) in deps, f"{stage}: its own script is not a dep"
    missing = sorted(str(f.relative_to(ROOT)) for f in project_files(script) if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage} imports modules it does not declare as deps: {missing}"


def _produced() -> set[str]:
    """Paths some stage writes (outs, metrics, plots): a dep on one of them is another stage's output."""
    paths = set()
    for s in STAGES.values():
        for key in ("outs", "metrics", "plots"):
            paths |= {next(iter(o)) if isinstance(o, dict) else o for o in s.get(key, [])}
    return paths


SCRATCH = ("data/downloads", "data/enhanced/")  # download cache and enhanced audio: neither a dep nor an out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_path_in_the_cmd_is_declared(stage):
    """The paths a script gets from its cmd are the stage's declared deps and outputs (written once)."""
    spec = STAGES[stage]
    words = spec["cmd"].split()
    given = [w for flag, w in zip(words, words[1:]) if flag.startswith("--")]
    assert given, f"{stage}: the cmd gives the script no paths"
    declared = [next(iter(o)) if isinstance(o, dict) else o
                for key in ("deps", "outs", "metrics", "plots") for o in spec.get(key, [])]
    undeclared = [p for p in given if not p.startswith(SCRATCH) and not any(  # inside a declared path, or
        p == d or p.startswith(d + "/") or d.startswith(p + "/") for d in declared)]  # the folder of one
    assert not undeclared, f"dvc.yaml stage {stage}: cmd paths not among its deps or outputs: {undeclared}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_exist(stage):
    produced = _produced()
    missing = [d for d in STAGES[stage]["deps"]
               if not (ROOT / d).exists() and not d.startswith(("data/", "models/")) and d not in produced]
    assert not missing, f"dvc.yaml stage {stage} depends on paths that do not exist: {missing}"


def test_walk_finds_function_level_imports(tmp_path):
    """The walk is not vacuous: the train stage reaches the trainer, the model and the tracking code."""
    files = {str(f.relative_to(ROOT)) for f in project_files(ROOT / "stages" / "train.py")}
    assert "effifusion/training/trainer.py" in files
    assert "effifusion/tracking/runs.py" in files  # imported inside a function
    assert any(f.startswith("effifusion/models/") for f in files)
