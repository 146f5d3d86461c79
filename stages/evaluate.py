"""Stage `evaluate`: the pruned model and its ONNX export, then dense and pruned side by side.

The dense result comes from the evaluate_dense stage (metrics/evaluate_dense.json). With
prune.method none the pruned model is the dense one (same bytes): its scores are reused, not recomputed.
Writes metrics/evaluate.json (one entry per variant) and reports/evaluate/summary.md (one row per variant).
"""

import json
from pathlib import Path

from effifusion.core.config import load_settings, run_stage
from effifusion.core.errors import DataError
from effifusion.core.files import write_json, write_text
from effifusion.evaluation.evaluate import combine_variants, evaluate, same_weights, variants_markdown

DENSE_METRICS = Path("metrics/evaluate_dense.json")


def main() -> None:
    params = load_settings()
    if not DENSE_METRICS.is_file():
        raise DataError(f"{DENSE_METRICS}: dense results not found (run `dvc repro evaluate_dense`)")
    dense = json.loads(DENSE_METRICS.read_text())
    out_dir, metrics_path = Path("reports/evaluate"), Path("metrics/evaluate.json")
    if same_weights(Path("models/pruned/generator.pt"), Path("models/dense/generator.pt")):
        pruned = {**dense, "variant": "pruned", "same_as": "dense"}
        write_json(out_dir / "pruned_same_as_dense.json", {"reason": "prune.method none: models/pruned is a "
                                                           "copy of models/dense; see reports/evaluate_dense"})
    else:
        pruned = evaluate(params, variant="pruned", torch_model=Path("models/pruned/generator.pt"),
                          onnx_model=Path("models/onnx/pruned.onnx"), out_dir=out_dir, metrics_path=metrics_path,
                          enhanced_dir=Path("data/enhanced/pruned"))
    metrics = combine_variants(dense, pruned, params.prune)
    write_json(metrics_path, metrics)
    write_text(out_dir / "summary.md", variants_markdown(metrics))
    for v in ("dense", "pruned"):
        test, unseen = metrics[v]["test"], metrics[v]["unseen"]
        print(f"evaluate {v}: test PESQ {test['noisy']['pesq']:.2f} -> {test['pytorch']['pesq']:.2f} "
              f"(ONNX {test['onnx']['pesq']:.2f}), unseen PESQ {unseen['noisy']['pesq']:.2f} -> "
              f"{unseen['pytorch']['pesq']:.2f}")


if __name__ == "__main__":
    run_stage(main)
