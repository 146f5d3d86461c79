"""Learning curve: validation PESQ against training steps and wall-clock time, for a preset.

    python bench/learning_curve.py --minutes 20                    # the demo preset (data/prepared)
    python bench/learning_curve.py --preset paper --minutes 60     # any preset, on its own device
    python bench/learning_curve.py --minutes 5 --set train.augment.enabled=false --tag no-augment

Runs the train stage's own code (effifusion.training.stages.train_dense, MLflow off) on the prepared data
for a fixed wall-clock budget, validating every ``--val-every`` steps on the held-out speakers,
and writes ``bench/results/learning_curve_<tag>.csv`` and ``.png`` (two panels: PESQ vs steps and
vs minutes, with the noisy input's PESQ as a dashed line). Wall-clock includes validation.
Nothing under data/, models/ or checkpoints/ is touched: outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def set_value(params: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to the nested params."""
    key, _, raw = assignment.partition("=")
    *path, last = key.split(".")
    node = params
    for k in path:
        node = node[k]
    if last not in node:
        raise SystemExit(f"--set {assignment}: {key} is not a setting of this preset")
    node[last] = yaml.safe_load(raw)


def noisy_pesq(prepared: Path, params: dict) -> float:
    """Validation PESQ of the unprocessed input on the same utterances the training validates on."""
    from effifusion.data.datasets import validation_items
    from effifusion.training.pesq_pool import PesqPool
    from effifusion.training.trainer import validate

    class Identity(torch.nn.Module):
        def enhance(self, wav: torch.Tensor) -> torch.Tensor:
            return wav

    items = validation_items(prepared / "val.csv", int(params["train"]["val_utterances"]), int(params["seed"]))
    with PesqPool(1) as pool:
        return validate(Identity(), items, torch.device("cpu"), pool)[0]


def plot(rows: list[dict], noisy: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, label in ((axes[0], "step", "training steps"), (axes[1], "minutes", "wall-clock minutes")):
        ax.plot([r[key] for r in rows], [r["val_pesq"] for r in rows], marker="o", label="model")
        ax.axhline(noisy, color="grey", linestyle="--", label=f"noisy input ({noisy:.2f})")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation PESQ (wide-band)")
    axes[0].legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="presets/NAME.yaml (default: params.yaml)")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--val-every", type=int, default=50, help="validate every N steps")
    ap.add_argument("--prepared", default=str(ROOT / "data" / "prepared"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    ap.add_argument("--tag", default=None, help="name of the output files (default: the preset's name)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from effifusion.core.config import load_params
    from effifusion.training.stages import train_dense

    params = load_params(ROOT / "presets" / f"{args.preset}.yaml" if args.preset else ROOT / "params.yaml")
    for assignment in args.set:
        set_value(params, assignment)
    params["train"].update(epochs=10**6, val_every_steps=args.val_every)  # the run ends on the clock
    params["runtime"]["checkpoint_every_steps"] = 10**9
    prepared = Path(args.prepared)
    tag = args.tag or params.get("preset", "params")
    noisy = noisy_pesq(prepared, params)
    print(f"noisy input: validation PESQ {noisy:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dense(params, prepared_dir=prepared, out_dir=tmp / "model", metrics_path=tmp / "m.json",
                    plots_dir=tmp / "plots", resume_dir=tmp / "ckpt", stop_after_s=args.minutes * 60, track=False)
        state = torch.load(tmp / "ckpt" / "train.pt", map_location="cpu", weights_only=False)["state"]
    rows = [{"step": v["step"], "minutes": round(v["elapsed_s"] / 60, 3), "val_pesq": round(v["val_pesq"], 4),
             "gain": round(v["val_pesq"] - noisy, 4)} for v in state["val"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"learning_curve_{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    m = params["model"]
    title = (f"{tag}: C={m.get('channels')} x{m.get('num_tsblocks')} blocks, batch {params['train']['batch_size']} x "
             f"{params['train']['segment_s']} s, lr {params['train']['lr']}, augment "
             f"{'on' if params['train']['augment']['enabled'] else 'off'}, {torch.get_num_threads()} threads")
    plot(rows, noisy, title, out / f"learning_curve_{tag}.png")
    print("| step | minutes | val PESQ | gain over noisy |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['minutes']:.1f} | {r['val_pesq']:.3f} | {r['gain']:+.3f} |")
    print(json.dumps({"tag": tag, "noisy": noisy, "final": rows[-1]}))


if __name__ == "__main__":
    main()
