"""Stage `evaluate`: the pruned model and its ONNX export, then dense and pruned side by side.

The dense result comes from the evaluate_dense stage (its metrics file). With prune.method none the
pruned model is the dense one (same bytes): its scores are reused, not recomputed. Writes the metrics
file (one entry per variant) and summary.md in the report folder (one row per variant).
"""

import json

from effifusion.core.config import load_settings, run_stage, stage_paths
from effifusion.core.errors import DataError
from effifusion.core.files import write_json, write_text
from effifusion.evaluation.evaluate import combine_variants, evaluate, same_weights, variants_markdown
from effifusion.models.registry import model_file


def main() -> None:
    paths = stage_paths("dense", "pruned", "onnx", "prepared", "unseen", "dense_metrics", "out", "metrics",
                        "enhanced")
    params = load_settings()
    if not paths["dense_metrics"].is_file():
        raise DataError(f"{paths['dense_metrics']}: dense results not found (run `dvc repro evaluate_dense`)")
    dense = json.loads(paths["dense_metrics"].read_text())
    out_dir, metrics_path = paths["out"], paths["metrics"]
    pruned_model = model_file(paths["pruned"])
    if same_weights(pruned_model, model_file(paths["dense"])):
        pruned = {**dense, "variant": "pruned", "same_as": "dense"}
        write_json(out_dir / "pruned_same_as_dense.json", {"reason": f"prune.method none: {paths['pruned']} is a "
                                                           f"copy of {paths['dense']}; see the evaluate_dense report"})
    else:
        pruned = evaluate(params, variant="pruned", torch_model=pruned_model, onnx_model=paths["onnx"],
                          prepared_dir=paths["prepared"], unseen_dir=paths["unseen"], out_dir=out_dir,
                          metrics_path=metrics_path, enhanced_dir=paths["enhanced"],
                          precision=params.export.precision)
    metrics = combine_variants(dense, pruned, params.prune)
    write_json(metrics_path, metrics)
    write_text(out_dir / "summary.md", variants_markdown(metrics))
    for v in ("dense", "pruned"):
        test, unseen = metrics[v]["test"], metrics[v]["unseen"]
        print(f"evaluate {v}: test PESQ {test['noisy']['pesq']:.2f} -> {test['pytorch']['pesq']:.2f} "
              f"(ONNX {test['onnx']['pesq']:.2f}), unseen PESQ {unseen['noisy']['pesq']:.2f} -> "
              f"{unseen['pytorch']['pesq']:.2f}")
    reduced = metrics["pruned"].get("precision")
    if reduced:
        p = reduced["precision"]
        print("evaluate pruned " + p + ": " + ", ".join(
            f"{s} PESQ {reduced[s][p]['pesq']:.3f} ({reduced[s]['minus_fp32']['pesq']:+.4f} vs fp32 ONNX)"
            for s in ("test", "unseen") if s in reduced))


if __name__ == "__main__":
    run_stage(main)
