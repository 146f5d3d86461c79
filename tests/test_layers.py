"""The package's layer contract: each subpackage imports only from the layers below it (module-level and
function-level imports alike), nothing imports in a cycle, and the runtime never reaches torch.

Order, bottom to top (a layer may import any layer before it, never one after it):
"""

from __future__ import annotations

import ast
from collections import defaultdict

from helpers import ROOT

PACKAGE = ROOT / "effifusion"
LAYERS = [
    "core",        # errors, files, params schema, config: no model, no torch
    "dsp",         # signals, audio files, resampling, the models' STFT front end
    "metrics",     # PESQ, composite measures, STOI, SI-SDR: numpy
    "diffusion",   # the reverse-SDE sampler: numpy, shared by PyTorch and ONNX Runtime
    "runtime",     # the torch-free Enhancer: ONNX Runtime, files, streaming
    "data",        # corpora, download, preparation, datasets, augmentation
    "models",      # architectures, the model contract, checkpoints, cost counts
    "tracking",    # MLflow runs, names, figures
    "training",    # trainer, tasks, callbacks, pruning
    "inference",   # load_enhancer (.onnx or .pt), ONNX export, pretrained imports, the bench
    "evaluation",  # evaluate, compare, report
    "cli",         # the effifusion command
]
TORCH = ("torch", "torchaudio", "torch_pruning")


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> dict[str, set[str]]:
    """module -> the modules it imports (effifusion.* and the third-party roots), at any depth of the file."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found[module].update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found[module].add(node.module)
                found[module].update(f"{node.module}.{alias.name}" for alias in node.names
                                     if node.module.startswith("effifusion"))
    return found


def _effifusion_target(name: str, modules: set[str]) -> str | None:
    """The effifusion module ``name`` refers to (``from pkg import module`` names a module too)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert subpackages | modules == set(LAYERS), "add the new subpackage to LAYERS (and the docstring's reason)"


def test_no_layer_imports_a_layer_above_it():
    imports = _imports()
    modules = set(imports)
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for module, names in sorted(imports.items()):
        source = _layer(module)
        for name in names:
            target = _effifusion_target(name, modules) if name.startswith("effifusion.") else None
            if target and _layer(target) and source in rank and rank[_layer(target)] > rank[source]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that reach up a layer:\n" + "\n".join(sorted(set(upward)))


def test_no_import_cycle_between_modules():
    imports = _imports()
    modules = set(imports)
    graph = {m: {t for n in names if n.startswith("effifusion.") and (t := _effifusion_target(n, modules))
                 and t != m and not m.startswith(t + ".") and not t.startswith(m + ".")}
             for m, names in imports.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_runtime_never_reaches_torch():
    """Everything the runtime imports, transitively, at module or function level, is torch-free."""
    imports = _imports()
    modules = set(imports)
    todo = [m for m in modules if _layer(m) == "runtime"]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for name in imports[m]:
            assert name.split(".")[0] not in TORCH, f"{m} imports {name} (the runtime must not need torch)"
            if name.startswith("effifusion.") and (target := _effifusion_target(name, modules)):
                todo.append(target)
    assert "effifusion.runtime.enhancer" in seen and "effifusion.dsp.stft" not in seen
