"""Stage `export`: models/{dense,pruned}/model.pt -> models/onnx/{dense,pruned}.onnx (parity-checked).

With ``export.precision`` int8, the pruned export's int8 model goes beside it (pruned.int8.onnx, calibrated
on data/prepared/train: inference/quantize.py); the evaluate stage scores it against fp32.

The dense export is redone only when its weights, the export settings or the code change (its report
records them), so a pruning sweep point exports only the pruned model. Each fresh export is logged to
the MLflow run that trained its weights: dense to the train run, pruned to the prune run.
"""

from pathlib import Path

from effifusion.core.config import load_settings, run_stage, stage_paths
from effifusion.core.files import write_json
from effifusion.inference.export import VARIANTS, export_variant, log_to_mlflow, remove_stale
from effifusion.inference.fusion_fit import ValidationLoader
from effifusion.inference.quantize import export_precision
from effifusion.models.registry import model_file
from effifusion.tracking import runs as tracking


def main() -> None:
    paths = stage_paths(*VARIANTS, "prepared", "out", "metrics")
    params = load_settings()
    out_dir = paths["out"]
    reports = {}
    # gp_sgmse: the final fusion is fitted on the utterances training validates on (never the test set)
    val_items = ValidationLoader(paths["prepared"], params.train.val_utterances, params.seed)
    for variant in VARIANTS:
        checkpoint = model_file(paths[variant])
        report, how = export_variant(variant, checkpoint, out_dir, params.export, params.audio, val_items)
        reports[variant] = {**report, "how": how}
        if how == "exported":
            with tracking.resume_run(checkpoint, params.raw, "export"):
                log_to_mlflow(Path(report["onnx_file"]), report)
        seconds = f", {report['export_seconds']:.0f} s" if "export_seconds" in report else ""
        print(f"export {variant} ({how}): {report['onnx_file']} {report['onnx_bytes']:,} bytes, "
              f"{report['params_nonzero']:,}/{report['params_total']:,} non-zero params, parity max |diff| "
              f"{report['onnx_parity_max_abs']:.2g}{seconds}")
    reduced = export_precision(reports["pruned"], params.export.precision, paths["prepared"] / "train",
                               params.audio.sample_rate)
    kept = list(reports.values())
    if reduced is not None:
        report, how = reduced
        reports["pruned"]["precision"] = {**report, "how": how}
        kept.append(report)
        detail = (f"{report['quantize_nodes']} QuantizeLinear nodes, calibrated on {report['calibration']}"
                  if "calibration" in report else report["engine"])
        print(f"export pruned {params.export.precision} ({how}): {report['onnx_file']} {report['onnx_bytes']:,} "
              f"bytes, {detail}")
    stale = remove_stale(out_dir, kept)
    if stale:
        print(f"export: removed stale files from {out_dir}: {', '.join(stale)}")
    write_json(paths["metrics"], reports)


if __name__ == "__main__":
    run_stage(main)
