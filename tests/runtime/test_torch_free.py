"""Enhancing needs no torch: `pip install .` or the wheel (no extras) gives `effifusion enhance` and the
Python API on numpy, soundfile, onnxruntime and tqdm alone.

The cheap tests run the enhance path in a subprocess of this environment with the pipeline's
packages made unimportable; the slow one builds the sdist and wheel, installs the wheel into a fresh
venv (pip, PyPI) and enhances a file with a tiny model exported here (this environment has torch), then
installs the same tree from a git URL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from onnx import TensorProto, helper

from effifusion.inference.export import parity_signal
from effifusion.runtime.onnx_model import INPUT_NAME, OUTPUT_NAME
from helpers import ROOT, diffusion_onnx

# The pipeline extra's packages: none may be imported on the enhance path.
PIPELINE_MODULES = ("torch", "torchaudio", "yaml", "scipy", "onnx", "onnxscript", "mlflow", "dvc",
                    "audiomentations", "pesq", "pystoi", "matplotlib")


# Prepended to a subprocess's code: importing any of PIPELINE_MODULES then fails.
BLOCK_PIPELINE = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {PIPELINE_MODULES!r}:\n"
    "            raise ImportError(f'blocked: {name}')\n"
    "        return None\n"
    "sys.meta_path.insert(0, Block())"
)


def identity_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])], "identity",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "samples"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    helper.set_model_props(model, {"sample_rate": "16000", "min_samples": "400", "arch": "identity"})
    onnx.save(model, str(path))
    return path


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: a fresh venv must run what it installed, not the work tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run_python(code: str, cwd: Path, python: str = sys.executable, timeout: float = 300,
               block_pipeline: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if python == sys.executable else clean_env()
    code = (BLOCK_PIPELINE + "\n" if block_pipeline else "") + textwrap.dedent(code)
    return subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_enhance_modules_import_without_torch(tmp_path: Path) -> None:
    """Importing the CLI, the file enhancer and the API loads none of the pipeline's packages."""
    out = run_python(f"""
        import json, sys
        import effifusion, effifusion.cli, effifusion.runtime.files, effifusion.inference.backends
        import effifusion.dsp.audio, effifusion.dsp.streaming, effifusion.dsp.resampler
        import effifusion.core.errors, effifusion.core.files, effifusion.core.params, effifusion.core.parallel
        from effifusion.inference import Enhancer, EnhanceOptions, load_enhancer
        print(json.dumps(sorted(m for m in {PIPELINE_MODULES!r} if m in sys.modules)))
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_enhance_runs_with_the_pipeline_packages_unimportable(tmp_path: Path) -> None:
    """`effifusion enhance`, --info, --version and Enhancer.enhance with torch & co. blocked; a .pt model
    then fails in one line naming the extra."""
    identity_onnx(tmp_path / "identity.onnx")
    x = np.stack([parity_signal(44100, 44100, seed=1), parity_signal(44100, 44100, seed=2)], axis=1)
    sf.write(tmp_path / "in.wav", x, 44100)
    (tmp_path / "generator.pt").write_bytes(b"PK\x03\x04 not really")
    out = run_python("""
        import numpy as np, soundfile as sf
        from effifusion.cli import main
        assert main(["enhance", "in.wav", "-o", "out", "--model", "identity.onnx", "-q"]) == 0
        assert main(["enhance", "--model", "identity.onnx", "--info"]) == 0
        from effifusion.inference import Enhancer
        x, sr = sf.read("in.wav", dtype="float32")
        y = Enhancer.from_file("identity.onnx").enhance(x, sr)
        assert y.shape == x.shape and np.allclose(y, sf.read("out/in.wav", dtype="float32")[0], atol=1 / 32768)
        print("exit", main(["enhance", "in.wav", "-o", "out2", "--model", "generator.pt"]))
    """, tmp_path, block_pipeline=True)
    assert out.returncode == 0, out.stderr
    assert '"arch": "identity"' in out.stdout and out.stdout.strip().endswith("exit 2")
    err = out.stderr.strip().splitlines()
    assert err == ["effifusion enhance: error: generator.pt: checkpoints need `pip install \".[pipeline]\" in a clone` "
                   "(PyTorch); the exported .onnx model needs only the plain install"]
    y, sr = sf.read(tmp_path / "out" / "in.wav", dtype="float32")
    assert sr == 44100 and y.shape == x.shape


def test_the_diffusion_sampler_runs_without_torch(tmp_path: Path) -> None:
    """A diffusion export (score and predictive graphs, sampler in numpy) enhances with torch & co.
    blocked, deterministically, and takes --sampler overrides."""
    diffusion_onnx(tmp_path)
    sf.write(tmp_path / "in.wav", parity_signal(16000, 16000, seed=3), 16000)
    out = run_python("""
        import numpy as np, soundfile as sf
        from effifusion.cli import main
        from effifusion.inference import load_enhancer
        x, sr = sf.read("in.wav", dtype="float32")
        e = load_enhancer("d.onnx")
        a, b = e.enhance(x), e.enhance(x)
        assert a.shape == x.shape and np.array_equal(a, b) and not np.allclose(a, x)
        p = load_enhancer("d.onnx", sampler={"mode": "predictive"}).enhance(x)
        assert not np.allclose(p, a)
        assert main(["enhance", "in.wav", "-o", "out", "--model", "d.onnx", "--sampler", "mode=predictive", "-q"]) == 0
        assert np.allclose(sf.read("out/in.wav", dtype="float32")[0], p, atol=1 / 32768)
        print("ok")
    """, tmp_path, block_pipeline=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def run_cli(bin_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed `effifusion` entry point of a fresh venv."""
    return subprocess.run([str(bin_dir / "effifusion"), *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env())


@pytest.mark.slow
def test_wheel_installs_and_enhances_without_torch(tmp_path: Path, tiny_export: dict) -> None:
    """README's installs in a fresh venv: `python -m build` makes an sdist and a wheel (the wheel from the
    sdist); `pip install` of the wheel, no extras (PyPI for numpy, soundfile, onnxruntime, tqdm), has no
    torch, and its `effifusion enhance` enhances a fixture WAV with a tiny exported generator as this
    environment's ONNX Runtime does; `enhance --info`, `bench --model` and `--version` run. Then `pip install
    "effifusion @ git+file://..."` of the same tree (pip builds it in an isolated env: setuptools from PyPI)
    replaces it. About 1-2 minutes with a cold pip cache."""
    from effifusion import __version__
    from effifusion.inference.backends import load_enhancer

    # a tiny trained-shape model, exported for real once per session (tests/conftest.py)
    model = tiny_export["onnx"]
    fixture = tmp_path / "noisy.wav"
    sf.write(fixture, parity_signal(3 * 22050, 22050, seed=5), 22050)

    # the package as a clone holds it: pyproject, README and the package, no build leftovers; a git repository
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "effifusion", src / "effifusion", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "src"]):
        subprocess.run([*git, *args], cwd=src, check=True, capture_output=True, timeout=60)

    # python -m build (this environment's setuptools: no download) -> dist/: one sdist, one wheel
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert sorted(p.name for p in dist.iterdir()) == [f"effifusion-{__version__}-py3-none-any.whl",
                                                      f"effifusion-{__version__}.tar.gz"]
    wheel = dist / f"effifusion-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert {n.split("/")[0] for n in names} == {"effifusion", f"effifusion-{__version__}.dist-info"}
    assert "effifusion/inference/pretrained.py" in names and "effifusion/cli.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = str(bin_dir / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    installed = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, timeout=900, env=clean_env())
    assert installed.returncode == 0, installed.stderr[-3000:]

    probe = run_python("""
        import importlib.util, json
        from importlib import metadata
        names = sorted(d.metadata["Name"].lower() for d in metadata.distributions())
        print(json.dumps({"torch": importlib.util.find_spec("torch") is not None, "packages": names}))
    """, tmp_path, python=python)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert not found["torch"]
    assert not set(found["packages"]) & {"torch", "torchaudio", "scipy", "pyyaml", "onnx", "mlflow", "dvc"}
    assert {"effifusion", "numpy", "soundfile", "onnxruntime", "tqdm"} <= set(found["packages"])

    cli = run_cli(bin_dir, "enhance", str(fixture), "-o", str(tmp_path / "out"), "--model", str(model), "-q")
    assert cli.returncode == 0 and cli.stderr == "", cli.stderr
    y, sr = sf.read(tmp_path / "out" / "noisy.wav", dtype="float32")
    x, _ = sf.read(fixture, dtype="float32")
    assert sr == 22050 and y.shape == x.shape
    expected = load_enhancer(model).enhance(x, sr)  # this environment (its onnxruntime may differ)
    np.testing.assert_allclose(y, expected, atol=1e-3, rtol=0)
    info = run_cli(bin_dir, "enhance", "--model", str(model), "--info")
    assert info.returncode == 0 and json.loads(info.stdout)["arch"] == "effifusion_gan", info.stderr
    bench = run_cli(bin_dir, "bench", "--model", str(model), "--seconds", "0.5", "--repeats", "1", "--json")
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert json.loads(bench.stdout.strip().splitlines()[-1])["rtf"] > 0
    assert run_cli(bin_dir, "--version").stdout.strip() == f"effifusion {__version__}"

    # from git, without a clone: the same package (pip builds the committed tree; the venv's pip 23 wants a
    # host in a file: URL)
    from_git = subprocess.run([*pip, "--no-deps", "--force-reinstall", f"effifusion @ git+file://localhost{src}"],
                              capture_output=True, text=True, timeout=600, env=clean_env())
    assert from_git.returncode == 0, from_git.stderr[-3000:]
    record = run_python("""
        from importlib import metadata
        print(metadata.distribution("effifusion").read_text("direct_url.json"))
    """, tmp_path, python=python)
    assert json.loads(record.stdout)["vcs_info"]["vcs"] == "git", record.stdout
    assert run_cli(bin_dir, "--version").stdout.strip() == f"effifusion {__version__}"
