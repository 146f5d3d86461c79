"""Stage `evaluate_dense`: the dense model and its ONNX export on the test set and unseen noises.

Its own stage, so it runs once per dense model: pruning sweep points reuse its result (DVC's cache) and
never write into the train run at the same time. Metrics go to the train run in MLflow.
"""

from effifusion.core.config import load_settings, run_stage, stage_paths
from effifusion.evaluation.evaluate import evaluate
from effifusion.models.registry import model_file


def main() -> None:
    paths = stage_paths("model", "onnx", "prepared", "unseen", "out", "metrics", "enhanced")
    m = evaluate(load_settings(), variant="dense", torch_model=model_file(paths["model"]), onnx_model=paths["onnx"],
                 prepared_dir=paths["prepared"], unseen_dir=paths["unseen"], out_dir=paths["out"],
                 metrics_path=paths["metrics"], enhanced_dir=paths["enhanced"])
    test, unseen = m["test"], m["unseen"]
    print(f"evaluate dense: test PESQ {test['noisy']['pesq']:.2f} -> {test['pytorch']['pesq']:.2f} "
          f"(ONNX {test['onnx']['pesq']:.2f}, {test['n']} files), unseen PESQ {unseen['noisy']['pesq']:.2f} -> "
          f"{unseen['pytorch']['pesq']:.2f} ({unseen['n']} files)")


if __name__ == "__main__":
    run_stage(main)
