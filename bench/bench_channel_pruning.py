"""Channel pruning: what it removes, and how much faster the ONNX export runs (dense vs pruned, one process).

    python bench/bench_channel_pruning.py                    # params.yaml's model, random weights
    python bench/bench_channel_pruning.py --amounts 0.3 0.5 --rtf-amount 0.5 --seconds 10 --repeats 5
    python bench/bench_channel_pruning.py --layers all-conv all-linear ...   # the attention's widths too

For each amount the model is pruned (prune.layers ``--layers``, default all-conv; prune.scope global) and
the table gives the fraction of prunable weights, of all parameters and of the analytic MACs removed
(1 s of audio, and ``--seconds``: the attention's products grow with the square of the length).
Then the dense model and the model pruned at ``--rtf-amount`` are exported (inference/export.py,
with its parity check) and timed in this process with ONNX Runtime on one thread: an untimed warm-up,
then ``--repeats`` runs of each, alternating, on the same ``--seconds`` input; RTF = best run / audio
(the median beside it: on a shared machine a burst of other work can land on either model's runs).
Random weights give other channels than a trained model would, but the same widths and the same cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params.yaml"), help="params file (its model section)")
    p.add_argument("--amounts", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--rtf-amount", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", nargs="+", default=["all-conv"],
                   help="prune.layers (all-linear selects the attention's in-projection: its widths go)")
    args = p.parse_args()

    import torch
    import yaml

    from effifusion.core.settings import AudioConfig, ExportConfig
    from effifusion.inference.export import export_onnx, onnx_session, parity_signal
    from effifusion.models.attention import head_dims
    from effifusion.models.cost import frames_for
    from effifusion.models.registry import build_model, save_checkpoint
    from effifusion.training.channel_pruning import prune_channels

    torch.set_num_threads(1)
    params = yaml.safe_load(Path(args.params).read_text())
    sr = int(params["audio"]["sample_rate"])

    def model():
        torch.manual_seed(int(params["seed"]))
        return build_model(params["model"], sr).eval()

    frames = frames_for(args.seconds, sr, int(params["model"]["hop_length"]))
    dense_macs = model().macs(frames)["total"]
    print(f"prune.layers {args.layers}, prune.scope global\n")
    print(f"| amount | prunable removed | params removed | MACs removed (1 s) | "
          f"MACs removed ({args.seconds:g} s) | GMAC/s dense | GMAC/s pruned | attention d_qk/d_v per head |")
    print("|---|---|---|---|---|---|---|---|")
    for amount in args.amounts:
        m = model()
        r = prune_channels(m, args.layers, amount, "global")
        widths = ", ".join(f"{name.split('.')[2].split('_')[0]} {'/'.join(map(str, head_dims(a)))}"
                           for name, a in m.named_modules() if isinstance(a, torch.nn.MultiheadAttention))
        print(f"| {amount:g} | {r['prunable_removed_fraction']:.3f} | {r['params_removed_fraction']:.3f} | "
              f"{r['macs_removed_fraction']:.3f} | {1 - m.macs(frames)['total'] / dense_macs:.3f} | "
              f"{r['gmac_per_second_dense']:.3f} | {r['gmac_per_second']:.3f} | {widths} |")

    export_cfg = ExportConfig(params["export"]["opset"], (1.0,), 1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        dense, pruned = model(), model()
        prune_channels(pruned, args.layers, args.rtf_amount, "global")
        sessions = {}
        for name, m in (("dense", dense), (f"pruned {args.rtf_amount:g}", pruned)):
            ckpt = Path(tmp) / f"{name.split()[0]}.pt"
            save_checkpoint(ckpt, m)
            report = export_onnx(ckpt, Path(tmp), export_cfg, AudioConfig(sr), name=f"{ckpt.stem}.onnx")
            sessions[name] = (onnx_session(Path(report["onnx_file"]), threads=1), report)
        x = parity_signal(int(args.seconds * sr), sr, seed=3)[None]
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for name, (session, _) in sessions.items():
            session.run(None, {"wav": x})  # warm-up
        for _ in range(args.repeats):
            for name, (session, _) in sessions.items():
                start = time.perf_counter()
                session.run(None, {"wav": x})
                times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nONNX Runtime, 1 thread, {args.seconds:g} s input, best of {args.repeats}:\n")
    print("| model | params | ONNX parity | RTF (best) | RTF (median) |")
    print("|---|---|---|---|---|")
    for name, (_, report) in sessions.items():
        print(f"| {name} | {report['params_total']:,} | {report['onnx_parity_max_abs']:.1e} | "
              f"{best[name] / args.seconds:.4f} | {median[name] / args.seconds:.4f} |")
    dense, pruned = list(sessions)
    print(f"\nRTF pruned / dense = {best[pruned] / best[dense]:.3f} (best), "
          f"{median[pruned] / median[dense]:.3f} (median)")


if __name__ == "__main__":
    main()
