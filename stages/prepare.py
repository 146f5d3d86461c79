"""Stage `prepare`: data/raw (VoiceBank layout) -> checked 16 kHz train/val/test pairs in data/prepared."""

from pathlib import Path

from effifusion.core.config import load_params, run_stage
from effifusion.data.prepare import prepare_corpus


def main() -> None:
    params = load_params()
    report = prepare_corpus(Path("data/raw"), Path("data/prepared"), params["prepare"],
                            sample_rate=params["audio"]["sample_rate"], workers=params["runtime"]["data_workers"])
    counts = report["counts"]
    print(f"prepare: train {counts['train']}, val {counts['val']}, test {counts['test']} pairs, "
          f"{report['skipped']} bad pairs skipped, {report['seconds']:.1f} s "
          f"({report['files_per_s']:.1f} files/s)")


if __name__ == "__main__":
    run_stage(main)
