"""`effifusion pretrained NAME -o DIR`: a published checkpoint, imported into this project's model of
that architecture, written as a checkpoint and an ONNX model that `effifusion enhance` takes.

The upstream file comes from ``pretrained.<name>.url`` in params.yaml through the dataset's download
code (resumable, retried, md5-verified against ``pretrained.<name>.md5``), or from a local copy
(``--source``: the file, or a folder holding it), verified the same way. Without a params file (an
install from a wheel, outside a clone) the built-in ``PUBLISHED`` table and ``DEFAULT_OPSET`` apply: the
same values as presets/base.yaml (a test keeps them equal). DIR receives:

- ``<name>.pt``: the checkpoint (this project's format; ``extra`` names the source and its md5);
- ``<name>.onnx``: the export, checked against the checkpoint (parity per ``export`` settings);
- ``LICENSE``: the upstream licence notice, which must travel with the weights;
- the upstream file itself (kept so a rerun needs no download);
- with ``--precision int8``: ``<name>.int8.onnx`` beside ``<name>.onnx`` (inference/quantize.py), calibrated
  on ``--calibration DIR`` (its WAV files, or those of its ``noisy/``) or by default on a few noisy
  utterances of the built-in demo corpus made on the fly: never the audio it is scored on;
- with ``--precision bf16``: ``<name>.bf16.onnx``, the same graph run by OpenVINO in bf16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from effifusion.core.errors import ConfigError
from effifusion.core.files import atomic_path, check_writable_dir, write_json
from effifusion.core.settings import PublishedCheckpoint


# name -> (upstream file name, loader, licence text, where the file comes from)
def _muse() -> tuple[str, Callable[[Path], Any], str, str]:
    from effifusion.models.muse.checkpoint import load_muse_checkpoint
    from effifusion.models.muse.licence import LICENSE, SOURCE

    return "g_best", load_muse_checkpoint, LICENSE, SOURCE


PRETRAINED: dict[str, Callable[[], tuple[str, Callable[[Path], Any], str, str]]] = {"muse": _muse}
# params.yaml's `pretrained` section and export opset as presets/base.yaml gives them: used without a params file
PUBLISHED = {"muse": {"url": "https://raw.githubusercontent.com/huaidanquede/MUSE-Speech-Enhancement/"
                             "38dfcb1ef545572fdc2e5c8aadefab9959ab9b6f/paper_result/g_best",
                      "md5": "8fd0ec3d594235c2cde51f60a87de8ed"}}
DEFAULT_OPSET = 18
# the export check of an imported model: inputs shorter than one MUSE segment and two segments long; the
# zero-padded 0.5 s input differs by 1.02e-4 between ONNX Runtime and PyTorch (measured), hence 2e-4
PARITY_LENGTHS_S = (0.5, 3.0)
PARITY_TOLERANCE = 2e-4


def demo_calibration(sample_rate: int, count: int | None = None, seed: int = 1234) -> list[np.ndarray]:
    """``count`` noisy utterances of the built-in demo corpus, made on the fly at ``sample_rate`` (training
    speakers and noises, 2-3 s, SNRs 0-15 dB): calibration audio that is never a scored set."""
    from effifusion.data import demo_corpus as demo
    from effifusion.data.mixing import item_seed
    from effifusion.inference.quantize import CALIBRATION_UTTERANCES

    count = count or CALIBRATION_UTTERANCES
    talkers = demo.make_talkers(sample_rate, np.random.default_rng(item_seed(seed, "talkers", sample_rate)))
    out = []
    for i in range(count):
        spk_name = ("p226", "p239", "p244", "p254", "p270", "p287")[i % 6]
        spk = demo.make_speaker(np.random.default_rng(item_seed(seed, "speaker", spk_name)))
        noise = demo.TRAIN_NOISES[i % len(demo.TRAIN_NOISES)]
        snr = demo.TRAIN_SNRS[i % len(demo.TRAIN_SNRS)]
        _, noisy = demo._make_pair(f"{spk_name}_cal{i:03d}", spk, noise, snr, sample_rate, 2.0, 3.0, seed, talkers)
        out.append(noisy.astype(np.float32))
    return out


def upstream_file(name: str, cfg: PublishedCheckpoint, out_dir: Path, source: str | None,
                  progress: bool = True) -> Path:
    """The verified upstream file: from ``source`` (file or folder) or downloaded into ``out_dir``."""
    from effifusion.data.download import fetch, md5sum

    file_name = PRETRAINED[name]()[0]
    md5 = cfg.md5
    if source is not None:
        path = Path(source)
        if path.is_dir():
            path = path / file_name
        if not path.is_file():
            raise ConfigError(f"{path}: no such file (--source takes the {name} checkpoint {file_name!r} "
                              "or the folder holding it)")
        actual = md5sum(path)
        if actual != md5.lower():
            raise ConfigError(f"{path}: md5 {actual} is not the published {name} checkpoint's {md5} "
                              f"(pretrained.{name}.md5 in params.yaml)")
        return path
    return fetch(cfg.url, out_dir / file_name, md5=md5, progress=progress)


def install(name: str, out_dir: str | Path, params: dict[str, Any] | None, source: str | None = None,
            progress: bool = True, precision: str = "fp32", calibration: str | None = None) -> dict[str, Any]:
    """Fetch, import, save and export the pretrained ``name`` into ``out_dir``; return the report.
    ``precision`` int8 also writes ``<name>.int8.onnx``, calibrated on ``calibration`` (a folder of WAV
    files) or, without one, on demo-corpus utterances made on the fly; bf16 writes ``<name>.bf16.onnx``.

    ``params``: params.yaml's mapping (its ``pretrained``, ``export`` and ``audio`` sections), or None for
    the built-in ``PUBLISHED`` table and the default export settings."""
    from dataclasses import replace

    from effifusion.core.settings import AudioConfig, ExportConfig, PretrainedConfig, parse_section
    from effifusion.inference.export import export_onnx
    from effifusion.inference.quantize import calibration_from_dir, check_precision, write_precision
    from effifusion.models.registry import save_checkpoint

    check_precision(precision)  # an unknown name: one line before any download
    if calibration is not None and not Path(calibration).is_dir():
        raise ConfigError(f"--calibration {calibration}: not a folder (WAV files of noisy speech to calibrate on)")

    if params is None:
        export = {"opset": DEFAULT_OPSET, "parity_lengths_s": list(PARITY_LENGTHS_S),
                  "parity_tolerance": PARITY_TOLERANCE, "sampler": {}, "precision": "fp32"}
        params = {"pretrained": PUBLISHED, "export": export}
    if name not in PRETRAINED:
        raise ConfigError(f"pretrained model {name!r} is not known (known: {', '.join(PRETRAINED)})")
    cfg = getattr(parse_section(PretrainedConfig, params.get("pretrained")), name)
    out = check_writable_dir(out_dir)
    _, load, licence, where = PRETRAINED[name]()
    upstream = upstream_file(name, cfg, out, source, progress)
    model = load(upstream)
    checkpoint = out / f"{name}.pt"
    save_checkpoint(checkpoint, model, extra={"imported_from": where, "upstream_md5": cfg.md5.lower(),
                                              "licence": "MIT (see LICENSE beside this file)"})
    with atomic_path(out / "LICENSE") as tmp:
        tmp.write_text(licence)
    # params.yaml's export settings (checked here: the command reads the file unchecked), this import's parity
    export = replace(parse_section(ExportConfig, params["export"]), parity_lengths_s=PARITY_LENGTHS_S,
                     parity_tolerance=PARITY_TOLERANCE)
    audio = parse_section(AudioConfig, params["audio"]) if "audio" in params else AudioConfig(model.sample_rate)
    report = export_onnx(checkpoint, out, export, audio, name=f"{name}.onnx")
    summary = {"name": name, "checkpoint": str(checkpoint), "onnx": str(out / f"{name}.onnx"),
               "licence": str(out / "LICENSE"), "source": str(upstream), "upstream": where,
               "params_total": report["params_total"], "parity_max_abs": report["onnx_parity_max_abs"],
               **({"polar_rounding_max_abs": report["polar_rounding_max_abs"]}
                  if "polar_rounding_max_abs" in report else {})}
    if precision != "fp32":
        sr = model.sample_rate
        reduced = write_precision(
            out / f"{name}.onnx", precision,
            (lambda: calibration_from_dir(calibration, sr)) if calibration else (lambda: demo_calibration(sr)),
            calibration_source=calibration or "demo corpus utterances made on the fly (demo_calibration)")
        summary[f"{precision}_onnx"] = reduced["onnx_file"]
        if "calibration" in reduced:  # int8
            summary[f"{precision}_calibration"] = reduced["calibration"]
    write_json(out / f"{name}.json", summary)
    return summary
