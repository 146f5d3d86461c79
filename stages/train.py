"""Stage `train`: dense training of the model on data/prepared -> models/dense."""


from effifusion.core.config import load_settings, run_stage, stage_paths
from effifusion.training.stages import train_dense


def main() -> None:
    paths = stage_paths("prepared", "out", "metrics", "plots")
    metrics = train_dense(load_settings(), prepared_dir=paths["prepared"], out_dir=paths["out"],
                          metrics_path=paths["metrics"], plots_dir=paths["plots"])
    print(f"train: val PESQ {metrics['val_pesq']:.3f} after {metrics['steps']} steps "
          f"({metrics['train_seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
