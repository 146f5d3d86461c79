"""Stage `prune`: fine-tune models/dense with dynamic L1 pruning to prune.amount -> models/pruned."""

from pathlib import Path

from effifusion.core.config import load_params, run_stage
from effifusion.training.stages import prune_finetune


def main() -> None:
    metrics = prune_finetune(load_params(), init_dir=Path("models/dense"), prepared_dir=Path("data/prepared"),
                             out_dir=Path("models/pruned"), metrics_path=Path("metrics/prune.json"),
                             plots_dir=Path("plots/prune"))
    print(f"prune: val PESQ {metrics['val_pesq']:.3f} at sparsity {metrics['conv_sparsity']:.3f} of conv "
          f"weights, {metrics['params_nonzero']:,}/{metrics['params_total']:,} non-zero params")


if __name__ == "__main__":
    run_stage(main)
