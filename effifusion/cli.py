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
    from effifusion.core import config

    if args.list:
        for name, parent in config.preset_names().items():
            print(name if parent is None else f"{name}  (extends {parent})")
        return
    if args.name is None:
        raise config.ConfigError("name a preset (or --list them)")
    if args.diff:
        changes = config.preset_diff(args.name, args.params)
        for key, current, new in changes:
            print(f"{key}: {config.yaml_value(current)} -> {config.yaml_value(new)}")
        if not changes:
            print(f"{args.params} already holds preset {args.name!r}")
        return
    params = config.apply_preset(args.name, args.params)
    m = params["model"]
    shape = (f"C={m['channels']}, {m['num_tsblocks']} TS-Conformer blocks" if m["arch"] == "effifusion_gan"
             else f"arch {m['arch']}" + (f", C={m['channels']}" if "channels" in m else ""))
    print(f"{args.params} <- preset {args.name!r} (corpus {params['corpus']['name']}, {shape})")


def _summary(args: argparse.Namespace) -> None:
    from effifusion.models.summary import summarize

    print(json.dumps(summarize(params_path=args.params, checkpoint=args.checkpoint, preset=args.preset), indent=2))


def _score(args: argparse.Namespace) -> None:
    from effifusion.metrics.quality import score_dirs

    means = score_dirs(args.clean, args.enhanced, out_csv=args.out, workers=args.workers,
                       convention=args.convention, allow_missing=args.allow_missing, noisy_dir=args.noisy)
    print(json.dumps(means, indent=2))


DEFAULT_MODEL = "models/onnx/pruned.onnx"
LEGACY_MODEL = "models/onnx/effifusion.onnx"  # the export's name before dense.onnx / pruned.onnx


def _default_model(model: str) -> str:
    """The default --model, or an older checkout's single export when only that exists (one notice line)."""
    from pathlib import Path

    if model == DEFAULT_MODEL and not Path(model).exists() and Path(LEGACY_MODEL).is_file():
        print(f"effifusion: {DEFAULT_MODEL} not found; using {LEGACY_MODEL} (the old export name, deprecated: "
              "rerun `dvc repro export`)", file=sys.stderr)
        return LEGACY_MODEL
    return model


def _enhance(args: argparse.Namespace) -> None:
    args.model = _default_model(args.model)
    if args.info:
        from effifusion.inference.backends import load_enhancer

        enhancer = load_enhancer(args.model, device=args.device, sampler=_sampler_overrides(args))
        print(json.dumps({"model": enhancer.source, "backend": enhancer.backend, **enhancer.card}, indent=2))
        return
    if not args.inputs or args.output is None:
        args.parser.error("enhance needs input files or folders and -o/--output (or --info)")
    from effifusion.inference.backends import load_enhancer
    from effifusion.runtime.files import enhance_paths
    from effifusion.runtime.processing import EnhanceOptions

    options = EnhanceOptions(atten_lim_db=args.atten_lim_db, mix=args.mix, high_band=args.high_band,
                             max_piece_s=args.max_piece_s)
    enhance_paths(args.inputs, args.output, model=args.model, options=options, device=args.device,
                  quiet=args.quiet, sampler=_sampler_overrides(args), load=load_enhancer)


def _sampler_overrides(args: argparse.Namespace) -> dict | None:
    """--sampler KEY=VALUE ... as a dict (true/false, integers and numbers decoded; no yaml: torch-free path)."""
    out: dict = {}
    for item in args.sampler or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            args.parser.error(f"--sampler {item!r}: expected KEY=VALUE, e.g. --sampler steps=10")
        value: object = text
        if text in ("true", "false"):
            value = text == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    pass
        out[key] = value
    return out or None


def _bench(args: argparse.Namespace) -> None:
    from effifusion.core.errors import ConfigError
    from effifusion.inference.bench import MODEL_REPEATS, bench_exported, describe, run_bench

    if args.model is not None:  # the file is the model: nothing to build, no other runtime
        if args.preset is not None:
            raise ConfigError(f"--preset {args.preset} does not apply with --model {args.model} "
                              "(the file is the model measured)")
        if args.backend not in (None, "onnx"):
            raise ConfigError(f"--backend {args.backend} does not apply with --model {args.model} "
                              "(an exported .onnx runs in ONNX Runtime)")
        if args.precision != "fp32":
            raise ConfigError(f"--precision {args.precision} does not apply with --model {args.model} "
                              "(the file's own precision is measured; see its card)")
        repeats = MODEL_REPEATS if args.repeats is None else args.repeats
        row = bench_exported(args.model, args.seconds, args.threads, repeats, progress=True, profile=args.profile)
    else:
        if args.repeats is not None:
            raise ConfigError("--repeats applies to --model only (a preset's bench times one run)")
        row = run_bench(args.preset or "demo", args.seconds, args.backend or "onnx", args.threads,
                        precision=args.precision, profile=args.profile)
    print(json.dumps(row) if args.json else describe(row))


def _report(args: argparse.Namespace) -> None:
    from effifusion.evaluation.report import sweep_report

    summary = sweep_report(out_dir=args.out, experiment=args.experiment, register=args.register,
                           dense_run_id=args.dense_run)
    print(json.dumps(summary, indent=2))


def _pretrained(args: argparse.Namespace) -> None:
    from pathlib import Path

    from effifusion.core.config import read_params
    from effifusion.inference.pretrained import install

    # without --params: ./params.yaml in a clone, else (a wheel) the published checkpoints' built-in table
    path = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    params = read_params(path) if path is not None else None
    summary = install(args.name, args.out, params, source=args.source, progress=not args.quiet,
                      precision=args.precision, calibration=args.calibration)
    print(json.dumps(summary, indent=2))


def _compare(args: argparse.Namespace) -> None:
    from effifusion.evaluation.compare import compare_report

    summary = compare_report(out_dir=args.out, experiment=args.experiment, bench=args.bench, seconds=args.seconds)
    print(json.dumps(summary, indent=2))


def _ui(args: argparse.Namespace) -> None:
    from effifusion.tracking.ui import ui

    code = ui(host=args.host, port=args.port, experiment=args.experiment, print_url_only=args.print_url_only,
              params_path=args.params)
    if code:
        sys.exit(code)


def version() -> str:
    """The installed distribution's version (package metadata); the source tree's when not installed."""
    from importlib import metadata

    try:
        return metadata.version("effifusion")
    except metadata.PackageNotFoundError:
        from effifusion import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effifusion", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("preset", help="write a preset (presets/base.yaml + presets/NAME.yaml's changes, comments "
                                      "kept) to params.yaml; --diff shows what would change, --list the presets")
    s.add_argument("name", nargs="?", help="a preset (see --list) or a path to a file of changes to base.yaml")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--diff", action="store_true", help="print `key: current -> preset` for each setting the "
                                                        "preset changes in --params; write nothing")
    s.add_argument("--list", action="store_true", help="print the presets (and the one each extends)")
    s.set_defaults(func=_preset)

    s = sub.add_parser("summary", help="parameter, sparsity and MAC counts as JSON")
    s.add_argument("--params", default="params.yaml", help="params file describing the model")
    source = s.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, help="a preset (presets/NAME.yaml) instead of --params")
    source.add_argument("--checkpoint", default=None, help="a trained model checkpoint (.pt) instead")
    s.set_defaults(func=_summary)

    s = sub.add_parser("pretrained", help="import a published checkpoint (muse) and write a checkpoint and an "
                                          "ONNX model that `effifusion enhance` takes")
    s.add_argument("name", help="muse: MUSE's VoiceBank+DEMAND checkpoint (Interspeech 2024, MIT)")
    s.add_argument("-o", "--out", required=True, help="output folder (NAME.pt, NAME.onnx, LICENSE, NAME.json)")
    s.add_argument("--source", default=None,
                   help="a local copy of the upstream file (or its folder) instead of downloading it")
    s.add_argument("--params", default=None, help="params file with pretrained.NAME.url / md5 (default: "
                                                  "./params.yaml if there is one, else the built-in table)")
    s.add_argument("--precision", default="fp32", choices=("fp32", "int8", "bf16"),
                   help="also write NAME.int8.onnx or NAME.bf16.onnx beside NAME.onnx (bf16 runs in OpenVINO; "
                        "docs/benchmarks.md: bf16 0.4-0.7x fp32's time, int8 no faster)")
    s.add_argument("--calibration", default=None, metavar="DIR",
                   help="noisy WAV files to calibrate int8 on (default: demo-corpus utterances made on the fly)")
    s.add_argument("-q", "--quiet", action="store_true", help="no download progress bar")
    s.set_defaults(func=_pretrained)

    s = sub.add_parser("score", help="PESQ, CSIG, CBAK, COVL, SSNR, STOI, ESTOI, SI-SDR (with --noisy also "
                                     "SI-SIR, SI-SAR) of enhanced vs clean files")
    s.add_argument("--clean", required=True, help="folder of clean references")
    s.add_argument("--enhanced", required=True, help="folder of outputs to score (matched by file name)")
    s.add_argument("--noisy", default=None,
                   help="folder of the noisy inputs (matched by file name): adds SI-SIR and SI-SAR, which "
                        "need the interference noisy - clean")
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

    s = sub.add_parser(
        "enhance", help="enhance audio files or folders with the exported model",
        description="Enhance audio files or folders (any format libsndfile reads, any rate, mono or "
                    "multi-channel); each output keeps its input's rate, channels, length and format.",
        epilog="The model works at 16 kHz: inputs at other rates are resampled to 16 kHz and back. Above "
               "16 kHz (44.1/48 kHz input) the band above 8 kHz, which the model never sees, is kept by "
               "default: the input's band above the 16 kHz round trip, scaled by the model's gain "
               "(enhanced RMS / input RMS per 20 ms, at most 1); --no-high-band drops it (nothing above "
               "~7.6 kHz in the output). --atten-lim-db and --mix are one linear blend: out = input + "
               "mix*(1 - 10^(-DB/20))*(enhanced - input); DB 0 or mix 0 gives the input back unchanged.")
    s.add_argument("inputs", nargs="*", help="audio files (WAV, FLAC, OGG, ...) or folders of them")
    s.add_argument("-o", "--output", help="output folder (created; checked writable before any work)")
    s.add_argument("--model", default=DEFAULT_MODEL,
                   help=".onnx export (plain install) or model checkpoint .pt (needs the pipeline install: "
                        "pip install '.[pipeline]'); "
                        "default: the pipeline's pruned export (models/onnx/dense.onnx is the dense one)")
    s.add_argument("--atten-lim-db", type=float, default=None, metavar="DB",
                   help="remove at most DB dB of noise: out = enhanced + 10^(-DB/20)*(input - enhanced); "
                        "0 gives the input back (default: no limit)")
    s.add_argument("--mix", type=float, default=1.0, metavar="W",
                   help="dry/wet in [0, 1]: 1 enhanced (default), 0 the input; applied after --atten-lim-db")
    s.add_argument("--no-high-band", dest="high_band", action="store_false",
                   help="drop the input's band above 8 kHz (44.1/48 kHz input) instead of keeping it scaled "
                        "by the model's gain")
    s.add_argument("--max-piece-s", "--chunk-s", dest="max_piece_s", type=float, default=60.0, metavar="S",
                   help="inputs up to S seconds are enhanced in one piece (one normalisation, exact); longer "
                        "ones in S-second chunks with 1 s raised-cosine cross-fades (default 60). "
                        "--chunk-s is the old name. Memory per piece: see --info (memory_mb_per_s)")
    s.add_argument("--device", default="cpu", help="cpu | cuda (checkpoints only)")
    s.add_argument("--sampler", action="append", metavar="KEY=VALUE",
                   help="diffusion models: override a sampler setting (mode, steps, snr, corrector_steps, "
                        "first_fusion, start_step, final_fusion, fusion_alpha, fusion_beta, seed; "
                        "fusion_weight=W sets alpha W, beta 1 - W); repeatable")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars (warnings and errors still printed)")
    s.add_argument("--info", action="store_true", help="print the model card of --model as JSON and exit")
    s.set_defaults(func=_enhance, parser=s)

    s = sub.add_parser("bench", help="inference cost of a preset's model (random weights) or of an exported "
                                     "model on this machine: real-time factor, GMAC/s, peak memory")
    s.add_argument("--preset", default=None, help="presets/NAME.yaml (or a params file) whose model to build "
                                                  "(default: demo)")
    s.add_argument("--model", default=None, metavar="FILE.onnx",
                   help="measure this exported model instead (its model card gives the architecture, "
                        "parameter and MAC counts); not with --preset")
    s.add_argument("--seconds", default="4", metavar="S",
                   help="input length in s, enhanced in one piece (default 4)")
    s.add_argument("--backend", default=None, metavar="onnx|pytorch",
                   help="ONNX Runtime on the exported model (default) or PyTorch eager on the checkpoint")
    s.add_argument("--threads", default="1", metavar="N", help="intra-op / torch threads (default 1)")
    s.add_argument("--precision", default="fp32", metavar="fp32|int8|bf16",
                   help="int8 or bf16: also write that model of the preset's export and time it against fp32, "
                        "alternately (the row gains time_ratio_to_fp32; bf16 runs in OpenVINO)")
    s.add_argument("--repeats", default=None, metavar="R",
                   help="--model only: timed runs after the warm-up, the RTF is their median (default 3)")
    s.add_argument("--profile", action="store_true",
                   help="run ONNX Runtime's profiler during the timed run and list the operators by time "
                        "(row: profile_top)")
    s.add_argument("--json", action="store_true", help="print one JSON object (the last line of stdout)")
    s.set_defaults(func=_bench)

    s = sub.add_parser("report", help="compare the runs of a pruning sweep (Markdown + PNG, logged to MLflow)")
    s.add_argument("--out", default="reports/sweep", help="output folder")
    s.add_argument("--experiment", default=None, help="MLflow experiment (default: params.yaml's)")
    s.add_argument("--register", action="store_true", help="register the best run's ONNX model")
    s.add_argument("--dense-run", default=None,
                   help="MLflow run id of the dense model whose sweep to report (default: the newest one's)")
    s.set_defaults(func=_report)

    s = sub.add_parser("compare", help="the architectures side by side: quality, size and cost of each one's newest "
                                       "evaluated run (Markdown + CSV + PNG, logged to MLflow)")
    s.add_argument("--out", default="reports/compare", help="output folder (default: reports/compare)")
    s.add_argument("--experiment", default=None, help="MLflow experiment (default: params.yaml's)")
    s.add_argument("--bench", action="store_true",
                   help="run `effifusion bench` (ONNX, 1 thread) on each row's model and log the results")
    s.add_argument("--seconds", default="2", metavar="S", help="input length of --bench in s (default 2)")
    s.set_defaults(func=_compare)

    s = sub.add_parser("ui", help="MLflow's UI on the project's store (or the tracking server's URL), with the URL "
                                  "that opens on this project's runs")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0: all)")
    s.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    s.add_argument("--experiment", default=None, help="MLflow experiment (default: params.yaml's)")
    s.add_argument("--params", default=None, help="params file naming the experiment (default: params.yaml)")
    s.add_argument("--print-url-only", action="store_true", help="print the URL and exit; start nothing")
    s.set_defaults(func=_ui)
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
