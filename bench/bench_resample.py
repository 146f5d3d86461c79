"""The project resampler (numpy, effifusion.dsp.resampler) against torchaudio.functional.resample.

    python bench/bench_resample.py              # 60 s mono, one BLAS / torch thread each (set before import)
    python bench/bench_resample.py --threads 0  # the libraries' default thread counts
    python bench/bench_resample.py --json       # one JSON object instead of the Markdown table

Times are the best of ``--repeats`` runs after an untimed one (kernels built and cached); the max
|difference| of the two outputs is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

PAIRS = [(44100, 16000), (16000, 44100), (48000, 16000), (16000, 48000), (8000, 16000), (22050, 16000)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1, help="BLAS and torch threads (0: library defaults)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import numpy as np
    import torch
    import torchaudio.functional as AF

    from effifusion.dsp.audio import RESAMPLING, resample

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {k: v for k, v in RESAMPLING.items() if k != "library"}

    def ta(x, orig, new):
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x.T)), orig, new, **settings).numpy().T

    rows = []
    for orig, new in PAIRS:
        x = (0.3 * np.random.default_rng(0).standard_normal((int(args.seconds * orig), 1))).astype(np.float32)
        row = {"orig": orig, "new": new}
        outputs = {}
        for name, fn in (("numpy", resample), ("torchaudio", ta)):
            outputs[name] = fn(x, orig, new)
            best = math.inf
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn(x, orig, new)
                best = min(best, time.perf_counter() - start)
            row[f"{name}_s"] = best
        row["ratio"] = row["numpy_s"] / row["torchaudio_s"]
        row["max_abs_diff"] = float(np.max(np.abs(outputs["numpy"] - outputs["torchaudio"])))
        rows.append(row)
    if args.json:
        print(json.dumps({"seconds": args.seconds, "threads": args.threads, "rows": rows}))
        return
    print(f"{args.seconds:g} s mono, {args.threads or 'default'} thread(s), best of {args.repeats}\n")
    print("| rates | numpy | torchaudio | numpy / torchaudio | max abs diff |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['orig']} → {r['new']} | {r['numpy_s'] * 1e3:.0f} ms | {r['torchaudio_s'] * 1e3:.0f} ms "
              f"| {r['ratio']:.2f} | {r['max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
