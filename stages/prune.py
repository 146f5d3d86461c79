"""Stage `prune`: models/dense -> models/pruned by prune.method (l1_unstructured, channel, or none: a copy)."""


from effifusion.core.config import load_settings, run_stage, stage_paths
from effifusion.training.stages import prune_finetune


def main() -> None:
    paths = stage_paths("dense", "prepared", "out", "metrics", "plots")
    params = load_settings()
    metrics = prune_finetune(params, init_dir=paths["dense"], prepared_dir=paths["prepared"], out_dir=paths["out"],
                             metrics_path=paths["metrics"], plots_dir=paths["plots"])
    if metrics.get("method") == "none":
        print(f"prune: method none, {paths['out']} = {paths['dense']} ({metrics['params_total']:,} params), "
              "no fine-tune")
        return
    print(f"prune ({params.prune.method}): val PESQ {metrics['val_pesq']:.3f}, "
          f"{metrics['params_nonzero']:,}/{metrics['params_total']:,} non-zero params")


if __name__ == "__main__":
    run_stage(main)
