"""Stage `evaluate_dense`: the dense model and its ONNX export on the test set and unseen noises.

Its own stage, so it runs once per dense model: pruning sweep points reuse its result (DVC's cache) and
never write into the train run at the same time. Metrics go to the train run in MLflow.
"""

from pathlib import Path

from effifusion.core.config import load_settings, run_stage
from effifusion.evaluation.evaluate import evaluate


def main() -> None:
    m = evaluate(load_settings(), variant="dense", torch_model=Path("models/dense/generator.pt"),
                 onnx_model=Path("models/onnx/dense.onnx"), out_dir=Path("reports/evaluate_dense"),
                 metrics_path=Path("metrics/evaluate_dense.json"), enhanced_dir=Path("data/enhanced/dense"))
    test, unseen = m["test"], m["unseen"]
    print(f"evaluate dense: test PESQ {test['noisy']['pesq']:.2f} -> {test['pytorch']['pesq']:.2f} "
          f"(ONNX {test['onnx']['pesq']:.2f}, {test['n']} files), unseen PESQ {unseen['noisy']['pesq']:.2f} -> "
          f"{unseen['pytorch']['pesq']:.2f} ({unseen['n']} files)")


if __name__ == "__main__":
    run_stage(main)
