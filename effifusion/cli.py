"""`effifusion` command line: the commands users run outside the DVC pipeline.

Each subcommand imports its module lazily so `effifusion --help` stays fast. Errors the user can
fix (EffiFusionError, MLflow store errors) are printed as one line naming the file and problem,
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _preset(args: argparse.Namespace) -> None:
    from effifusion.core.config import apply_preset

    params = apply_preset(args.name, args.params)
    print(f"params.yaml <- preset {args.name!r} (corpus {params['corpus']['name']}, "
          f"C={params['model']['channels']}, {params['model']['num_tsblocks']} TS-Conformer blocks)")


def _summary(args: argparse.Namespace) -> None:
    from effifusion.models.summary import summarize

    print(json.dumps(summarize(params_path=args.params, checkpoint=args.checkpoint, preset=args.preset), indent=2))


def _score(args: argparse.Namespace) -> None:
    from effifusion.evaluation.metrics import score_dirs

    means = score_dirs(args.clean, args.enhanced, out_csv=args.out, workers=args.workers,
                       convention=args.convention, allow_missing=args.allow_missing)
    print(json.dumps(means, indent=2))


def _enhance(args: argparse.Namespace) -> None:
    from effifusion.inference.files import enhance_paths

    enhance_paths(args.inputs, args.output, model=args.model, chunk_s=args.chunk_s, device=args.device)


def _bench(args: argparse.Namespace) -> None:
    from effifusion.inference.bench import describe, run_bench

    row = run_bench(args.preset, args.seconds, args.backend, args.threads)
    print(json.dumps(row) if args.json else describe(row))


def _report(args: argparse.Namespace) -> None:
    from effifusion.evaluation.report import sweep_report

    summary = sweep_report(out_dir=args.out, experiment=args.experiment, register=args.register,
                           dense_run_id=args.dense_run)
    print(json.dumps(summary, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effifusion", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("preset", help="copy presets/NAME.yaml over params.yaml (demo | paper)")
    s.add_argument("name")
    s.add_argument("--params", default="params.yaml")
    s.set_defaults(func=_preset)

    s = sub.add_parser("summary", help="parameter, sparsity and MAC counts as JSON")
    s.add_argument("--params", default="params.yaml", help="params file describing the model")
    source = s.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="a preset (presets/NAME.yaml) instead of --params")
    source.add_argument("--checkpoint", default=None, help="a trained model checkpoint (.pt) instead")
    s.set_defaults(func=_summary)

    s = sub.add_parser("score", help="PESQ, CSIG, CBAK, COVL, SSNR, STOI of enhanced vs clean files")
    s.add_argument("--clean", required=True, help="folder of clean references")
    s.add_argument("--enhanced", required=True, help="folder of outputs to score (matched by file name)")
    s.add_argument("--out", default=None, help="write per-file rows to this CSV (checked writable first)")
    s.add_argument("--allow-missing", action="store_true",
                   help="score the files present when some clean references have no enhanced file "
                        "(default: that is an error)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--convention", choices=("matlab", "published"), default="matlab",
                   help="CSIG/CBAK/COVL as Loizou's MATLAB code computes them (default), or as the "
                        "CMGAN/MP-SENet Python port does on float input, like published tables "
                        "(reported as csig_published, ...)")
    s.set_defaults(func=_score)

    s = sub.add_parser("enhance", help="enhance audio files or folders with the exported model")
    s.add_argument("inputs", nargs="+", help="audio files (WAV, FLAC, OGG, ...) or folders of them")
    s.add_argument("-o", "--output", required=True, help="output folder (created; checked writable before any work)")
    s.add_argument("--model", default="models/onnx/effifusion.onnx", help=".onnx model or generator .pt")
    s.add_argument("--chunk-s", type=float, default=4.0,
                   help="chunk length in s for long recordings (attention memory grows with its square)")
    s.add_argument("--device", default="cpu", help="cpu | cuda (checkpoints only)")
    s.set_defaults(func=_enhance)

    s = sub.add_parser("bench", help="inference cost of a preset's model on this machine: real-time factor, "
                                     "GMAC/s, peak memory (random weights)")
    s.add_argument("--preset", default="demo", help="presets/NAME.yaml (or a params file) whose model to build "
                                                    "(default: demo)")
    s.add_argument("--seconds", default="4", metavar="S",
                   help="input length in s, enhanced in one piece (default 4, the chunk `enhance` runs)")
    s.add_argument("--backend", default="onnx", metavar="onnx|pytorch",
                   help="ONNX Runtime on the exported model (default) or PyTorch eager on the checkpoint")
    s.add_argument("--threads", default="1", metavar="N", help="intra-op / torch threads (default 1)")
    s.add_argument("--json", action="store_true", help="print one JSON object (the last line of stdout)")
    s.set_defaults(func=_bench)

    s = sub.add_parser("report", help="compare the runs of a pruning sweep (Markdown + PNG, logged to MLflow)")
    s.add_argument("--out", default="reports/sweep", help="output folder")
    s.add_argument("--experiment", default=None, help="MLflow experiment (default: params.yaml's)")
    s.add_argument("--register", action="store_true", help="register the best run's ONNX model")
    s.add_argument("--dense-run", default=None,
                   help="MLflow run id of the dense model whose sweep to report (default: the newest one's)")
    s.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    from effifusion.core.errors import user_message

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        print(f"effifusion {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
