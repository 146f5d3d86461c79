"""Seconds per file of each metric on the VoiceBank fixture pairs (one process, one thread).

Usage: .venv/bin/python bench/bench_metrics.py [FOLDER]   (default ../shared/fixtures/voicebank_test_16k)
Prints JSON: mean seconds per file and per second of audio for PESQ, LLR, WSS, SSNR, STOI,
the whole composite and score_pair.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from effifusion.dsp.audio import read_wav
from effifusion.evaluation import metrics

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    default = ROOT.parent / "shared" / "fixtures" / "voicebank_test_16k"
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    pairs = []
    for path in sorted((folder / "noisy").glob("*.wav")):
        clean, _ = read_wav(folder / "clean" / path.name)
        noisy, _ = read_wav(path)
        pairs.append((clean.astype(np.float64), noisy.astype(np.float64)))
    if not pairs:
        sys.exit(f"no WAV pairs under {folder}/noisy")
    audio_s = sum(len(c) for c, _ in pairs) / metrics.PESQ_SAMPLE_RATE
    candidates = {
        "pesq": lambda c, e: metrics.pesq_wb(c, e),
        "llr": lambda c, e: metrics.llr_frames(c, e),
        "wss": lambda c, e: metrics.wss_frames(c, e),
        "ssnr": lambda c, e: metrics.ssnr_frames(c, e),
        "composite": lambda c, e: metrics.composite(c, e, pesq=2.0),
        "stoi": lambda c, e: metrics.stoi_score(c, e),
        "score_pair": lambda c, e: metrics.score_pair(c, e),
    }
    result = {"files": len(pairs), "mean_file_s": round(audio_s / len(pairs), 2)}
    for name, fn in candidates.items():
        fn(*pairs[0])  # warm caches (filters, imports)
        start = time.perf_counter()
        for clean, enhanced in pairs:
            fn(clean, enhanced)
        elapsed = time.perf_counter() - start
        result[name] = {"s_per_file": round(elapsed / len(pairs), 4),
                        "s_per_audio_s": round(elapsed / audio_s, 4)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
