"""Stage `export`: models/pruned/generator.pt -> models/onnx/effifusion.onnx (parity-checked), to MLflow."""

from pathlib import Path

from effifusion.tracking import runs as tracking
from effifusion.core.config import load_params, run_stage
from effifusion.inference.export import ONNX_FILE, export_onnx, log_to_mlflow
from effifusion.core.files import write_json


def main() -> None:
    params = load_params()
    out_dir = Path("models/onnx")
    report = export_onnx(Path("models/pruned/generator.pt"), out_dir, params["export"], params["audio"])
    write_json(Path("metrics/export.json"), report)
    with tracking.resume_run(Path("models/pruned/generator.pt"), params, "export"):
        log_to_mlflow(out_dir / ONNX_FILE, report)
    print(f"export: {report['onnx_bytes']:,} bytes ({report['onnx_zip_bytes']:,} zipped), "
          f"{report['params_nonzero']:,}/{report['params_total']:,} non-zero params, "
          f"parity max |diff| {report['onnx_parity_max_abs']:.2g} ({report['export_seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
