"""The diffusion model's outputs side by side: predictive, generative, joint, each fusion off, fewer steps.

    python bench/diffusion_modes.py --model models/onnx/pruned.onnx --prepared data/prepared \
        --unseen data/unseen [--out bench/results/diffusion_modes_demo]

One exported gp_sgmse model (ONNX Runtime, torch-free, 1 thread) is run with each sampler setting of
``MODES`` (overrides of its card's ``model.sampler``, exactly as ``export.sampler`` or
``effifusion enhance --sampler`` apply them) on the test and unseen manifests, and scored with the
project's metrics (MATLAB convention for CSIG / CBAK / COVL; ESTOI, SI-SDR). Cost per utterance is
network evaluations and the real-time factor of the whole run. Writes ``modes.json`` and ``modes.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {  # name -> overrides of the exported sampler settings
    "noisy": None,
    "predictive": {"mode": "predictive"},
    "generative": {"mode": "generative", "first_fusion": False, "final_fusion": False, "start_step": 0},
    "joint": {},
    "joint, no final fusion": {"final_fusion": False},
    "joint, no first fusion": {"first_fusion": False, "start_step": 0},
}
METRICS = ("pesq", "csig", "cbak", "covl", "ssnr", "stoi", "estoi", "si_sdr")


def items(manifest: Path) -> list[tuple[str, Path, Path]]:
    base = manifest.parent
    out = []
    for r in csv.DictReader(open(manifest)):
        resolve = lambda p: Path(p) if Path(p).is_absolute() else base / p  # noqa: E731
        out.append((r["utt"], resolve(r["clean"]), resolve(r["noisy"])))
    return out


def main() -> None:
    from effifusion.dsp.audio import read_wav, write_wav
    from effifusion.inference.backends import load_enhancer
    from effifusion.metrics.quality import score_files

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prepared", required=True)
    p.add_argument("--unseen", required=True)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "diffusion_modes_demo"))
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    sets = {"test": items(Path(args.prepared) / "test.csv"), "unseen": items(Path(args.unseen) / "unseen.csv")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in MODES.items():
            row: dict = {"overrides": overrides}
            if overrides is not None:
                enhancer = load_enhancer(args.model, threads=1, sampler=overrides)
                row["sampler"] = enhancer.card["sampler"]
            for set_name, its in sets.items():
                pairs, audio_s, start = [], 0.0, time.perf_counter()
                for utt, clean, noisy in its:
                    if overrides is None:
                        pairs.append((utt, clean, noisy))
                        continue
                    wav, sr = read_wav(noisy)
                    audio_s += len(wav) / sr
                    out = Path(tmp) / name / set_name / f"{utt}.wav"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    write_wav(out, enhancer.enhance_segment(wav), sr)
                    pairs.append((utt, clean, out))
                compute = time.perf_counter() - start
                scores = score_files(pairs, workers=args.workers, progress=False)
                row[set_name] = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
                if overrides is not None:
                    row[set_name]["rtf"] = compute / audio_s
            if overrides is not None:
                from effifusion.diffusion.sampler import SamplerSettings

                row["evaluations"] = SamplerSettings(**row["sampler"]).evaluations()
            results[name] = row
            shown = {k: v for k, v in row.items() if k in ("test", "unseen", "evaluations")}
            print(name, json.dumps(shown), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "modes.json").write_text(json.dumps({"model": args.model, "modes": results}, indent=2) + "\n")
    lines = ["| output | network evaluations | test PESQ | test CSIG / CBAK / COVL (MATLAB) | test ESTOI "
             "| test SI-SDR (dB) | unseen PESQ | unseen ESTOI | unseen SI-SDR (dB) | RTF (ONNX, 1 thread) |",
             "|" + "---|" * 10]
    for name, r in results.items():
        t, u = r["test"], r["unseen"]
        lines.append(f"| {name} | {r.get('evaluations', '—')} | {t['pesq']:.3f} | {t['csig']:.2f} / {t['cbak']:.2f} / "
                     f"{t['covl']:.2f} | {t['estoi']:.3f} | {t['si_sdr']:.2f} | {u['pesq']:.3f} | {u['estoi']:.3f} | "
                     f"{u['si_sdr']:.2f} | {t.get('rtf', float('nan')):.2f} |".replace("| nan |", "| — |"))
    (out / "modes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
