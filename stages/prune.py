"""Stage `prune`: GAN fine-tune from models/dense with dynamic L1 pruning to prune.amount -> models/pruned."""

from pathlib import Path

from effifusion.core.config import load_params, run_stage
from effifusion.training.trainer import run_training


def main() -> None:
    params = load_params()
    metrics = run_training(params, "prune", prepared_dir=Path("data/prepared"), out_dir=Path("models/pruned"),
                           init_dir=Path("models/dense"), metrics_path=Path("metrics/prune.json"),
                           plots_dir=Path("plots/prune"))
    if metrics.get("interrupted") is None:
        print(f"prune: val PESQ {metrics['val_pesq']:.3f} at sparsity {metrics['conv_sparsity']:.3f} of conv "
              f"weights, {metrics['params_nonzero']:,}/{metrics['params_total']:,} non-zero params")


if __name__ == "__main__":
    run_stage(main)
