"""Stage `train`: dense GAN training of EffiFusion-GAN on data/prepared -> models/dense."""

from pathlib import Path

from effifusion.core.config import load_params, run_stage
from effifusion.training.trainer import run_training


def main() -> None:
    params = load_params()
    metrics = run_training(params, "train", prepared_dir=Path("data/prepared"), out_dir=Path("models/dense"),
                           metrics_path=Path("metrics/train.json"), plots_dir=Path("plots/train"))
    if metrics.get("interrupted") is None:
        print(f"train: val PESQ {metrics['val_pesq']:.3f} after {metrics['steps']} steps "
              f"({metrics['train_seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
