"""MUSE's public checkpoint in this project against MUSE's own outputs, on the 25 VoiceBank+DEMAND fixtures.

    python bench/reproduce_muse.py                      # ../shared/fixtures, writes bench/results/reproduce_muse.json
    python bench/reproduce_muse.py --onnx DIR/muse.onnx # also the exported model (effifusion pretrained muse -o DIR)

Three ways of running the same weights, each written as 16-bit PCM like MUSE's inference.py and scored
with the project's metrics (MATLAB convention) against ``clean/``:

- ``segments``: the checkpoint in PyTorch with MUSE's protocol (30,700-sample segments, last from the
  end, one RMS gain per utterance): should equal ``enhanced_muse/`` (max |diff| after 16-bit rounding);
- ``onnx``: the exported model through the torch-free enhancer (same protocol around the graph);
- ``whole``: the same weights on each utterance in one piece (``segment_samples: 0``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixtures", default=str(FIXTURES))
    p.add_argument("--onnx", default=None, help="an exported MUSE (.onnx) to run too")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--systems", default="segments,whole,onnx", help="which of segments, whole, onnx to run")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "reproduce_muse.json"))
    args = p.parse_args()

    import torch

    from effifusion.metrics.quality import score_dirs
    from effifusion.models.muse.checkpoint import load_muse_checkpoint
    from effifusion.runtime.enhancer import onnx_enhancer

    torch.set_num_threads(args.threads)
    fx = Path(args.fixtures) / "voicebank_test_16k"
    checkpoint = Path(args.fixtures) / "pretrained" / "muse" / "g_best"
    segmented = load_muse_checkpoint(checkpoint)
    whole = load_muse_checkpoint(checkpoint, segment_samples=0)

    def torch_run(model):
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model.enhance(torch.from_numpy(x)[None])[0].numpy()
        return run

    systems = {"segments": torch_run(segmented), "whole": torch_run(whole)}
    if args.onnx:
        systems["onnx"] = onnx_enhancer(Path(args.onnx), threads=args.threads).enhance_segment
    systems = {k: v for k, v in systems.items() if k in args.systems.split(",")}
    noisy = sorted((fx / "noisy").glob("*.wav"))
    results: dict = {"files": len(noisy), "threads": args.threads, "convention": "matlab"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in systems.items():
            out = Path(tmp) / name
            out.mkdir()
            per_file, t0 = {}, time.perf_counter()
            for f in noisy:
                x, _ = sf.read(f, dtype="float32")
                y = run(x)
                sf.write(out / f.name, y, 16000, subtype="PCM_16")
                y16, _ = sf.read(out / f.name, dtype="float32")
                ref, _ = sf.read(fx / "enhanced_muse" / f.name, dtype="float32")
                per_file[f.stem] = float(np.max(np.abs(y16 - ref)))
            seconds = time.perf_counter() - t0
            means = score_dirs(fx / "clean", out, workers=2)
            results[name] = {"max_abs_vs_enhanced_muse": max(per_file.values()),
                             "files_within_1e-3": sum(d <= 1e-3 for d in per_file.values()),
                             "max_abs_per_file": per_file, "enhance_seconds": round(seconds, 1), **means}
            print(name, json.dumps(results[name]), file=sys.stderr)
    results["enhanced_muse"] = score_dirs(fx / "clean", fx / "enhanced_muse", workers=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
