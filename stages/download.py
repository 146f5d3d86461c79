"""Stage download: build data/raw from the corpus chosen by params.yaml ``corpus.name``.

demo             -> the built-in synthetic corpus (no network)
voicebank_demand -> the VoiceBank+DEMAND zips and the unseen DEMAND noises (cached in data/downloads)
Both write the same layout, so later stages cannot tell them apart.
"""

from __future__ import annotations

from effifusion.core.config import load_settings, run_stage, stage_paths


def main() -> None:
    paths = stage_paths("out", "downloads")
    params = load_settings()
    if params.corpus.name == "demo":
        from effifusion.data.demo_corpus import generate_demo_corpus

        generate_demo_corpus(paths["out"], params.corpus.demo, seed=params.seed)
    else:  # voicebank_demand (the schema admits no other)
        from effifusion.data.voicebank import fetch_voicebank_demand

        fetch_voicebank_demand(paths["out"], params.download, paths["downloads"])


if __name__ == "__main__":
    run_stage(main)
