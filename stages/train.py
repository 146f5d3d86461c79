"""Stage `train`: dense training of the model on data/prepared -> models/dense."""

from pathlib import Path

from effifusion.core.config import load_params, run_stage
from effifusion.training.stages import train_dense


def main() -> None:
    metrics = train_dense(load_params(), prepared_dir=Path("data/prepared"), out_dir=Path("models/dense"),
                          metrics_path=Path("metrics/train.json"), plots_dir=Path("plots/train"))
    print(f"train: val PESQ {metrics['val_pesq']:.3f} after {metrics['steps']} steps "
          f"({metrics['train_seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
