"""Stage `prune`: models/dense -> models/pruned by prune.method (l1_unstructured, channel, or none: a copy)."""

from pathlib import Path

from effifusion.core.config import load_settings, run_stage
from effifusion.training.stages import prune_finetune


def main() -> None:
    params = load_settings()
    metrics = prune_finetune(params, init_dir=Path("models/dense"), prepared_dir=Path("data/prepared"),
                             out_dir=Path("models/pruned"), metrics_path=Path("metrics/prune.json"),
                             plots_dir=Path("plots/prune"))
    if metrics.get("method") == "none":
        print(f"prune: method none, models/pruned = models/dense ({metrics['params_total']:,} params), "
              "no fine-tune")
        return
    print(f"prune ({params.prune.method}): val PESQ {metrics['val_pesq']:.3f}, "
          f"{metrics['params_nonzero']:,}/{metrics['params_total']:,} non-zero params")


if __name__ == "__main__":
    run_stage(main)
