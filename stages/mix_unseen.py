"""Stage `mix_unseen`: the prepared test utterances mixed with unseen DEMAND noises -> data/unseen."""


from effifusion.core.config import load_settings, run_stage, stage_paths
from effifusion.core.files import write_json
from effifusion.data.mixing import mix_unseen


def main() -> None:
    paths = stage_paths("prepared", "raw", "out", "metrics")
    params = load_settings()
    report = mix_unseen(paths["prepared"], paths["raw"], paths["out"], params.mix_unseen, seed=params.seed,
                        sample_rate=params.audio.sample_rate, workers=params.runtime.data_workers)
    snr, timing = report["measured_snr_db"], report["timing"]
    write_json(paths["metrics"], {"files": report["counts"]["files"],
                                                 "snr_error_max_abs_db": snr["error_max_abs_db"], **timing})
    print(f"mix_unseen: {report['counts']['files']} mixtures ({report['counts']['noises']} noises x "
          f"{report['counts']['snrs']} SNRs), SNR error max {snr['error_max_abs_db']:.3f} dB, "
          f"{timing['seconds']:.1f} s ({timing['files_per_s']:.1f} files/s)")


if __name__ == "__main__":
    run_stage(main)
