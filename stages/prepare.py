"""Stage `prepare`: data/raw (VoiceBank layout) -> checked 16 kHz train/val/test pairs in data/prepared."""


from effifusion.core.config import load_settings, run_stage, stage_paths
from effifusion.core.files import write_json
from effifusion.data.prepare import prepare_corpus


def main() -> None:
    paths = stage_paths("raw", "out", "metrics")
    params = load_settings()
    report = prepare_corpus(paths["raw"], paths["out"], params.prepare, sample_rate=params.audio.sample_rate,
                            workers=params.runtime.data_workers)
    counts, timing = report["counts"], report["timing"]
    write_json(paths["metrics"], {"pairs": counts, "skipped": report["skipped"], **timing})
    print(f"prepare: train {counts['train']}, val {counts['val']}, test {counts['test']} pairs, "
          f"{report['skipped']} bad pairs skipped, {timing['seconds']:.1f} s "
          f"({timing['files_per_s']:.1f} files/s)")


if __name__ == "__main__":
    run_stage(main)
