"""Stage `evaluate`: the pruned generator and its ONNX export on the test set and unseen noises."""

from effifusion.core.config import load_params, run_stage
from effifusion.evaluation.evaluate import evaluate


def main() -> None:
    metrics = evaluate(load_params())
    test, unseen, rtf = metrics["test"], metrics["unseen"], metrics["rtf"]
    print(f"evaluate: test PESQ {test['noisy']['pesq']:.2f} -> {test['pytorch']['pesq']:.2f} "
          f"(ONNX {test['onnx']['pesq']:.2f}, {test['n']} files), unseen PESQ "
          f"{unseen['noisy']['pesq']:.2f} -> {unseen['pytorch']['pesq']:.2f} ({unseen['n']} files), "
          f"RTF PyTorch {rtf['pytorch']:.3f} / ONNX {rtf['onnx']:.3f}")


if __name__ == "__main__":
    run_stage(main)
