"""Small writers for what people read: JSON/CSV/Markdown tables and PNG figures (atomic writes)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    def clean(v: Any) -> Any:  # JSON has no NaN: write null
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    write_text(path, json.dumps(clean(data), indent=2) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or _columns(rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or _columns(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(_fmt(r.get(c), 3)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _fmt(v: Any, digits: int = 6) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, digits)
    return "" if v is None else v


# ---------------------------------------------------------------------------------------------
# Figures


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (stages run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_figures(state: dict[str, Any], out_dir: Path, stage: str) -> list[Path]:
    """Loss curves, validation PESQ and (prune stage) sparsity against step, as PNGs."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    hist = state["history"]
    if hist:
        steps = [r["step"] for r in hist]
        keys = [k for k in hist[0] if k.startswith(("g_", "d_"))]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for k in keys:
            (axes[1] if k in ("g_total", "d_loss", "g_metric") else axes[0]).plot(
                steps, [r[k] for r in hist], label=k, lw=1)
        for ax, title in zip(axes, ("generator loss terms", "totals")):
            ax.set_xlabel("step")
            ax.set_title(f"{stage}: {title}")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        paths.append(save_figure(fig, out_dir / f"{stage}_losses.png"))
    if state["val"] or state["sparsity"]:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        if state["val"]:
            ax.plot([r["step"] for r in state["val"]], [r["val_pesq"] for r in state["val"]], "o-", label="val PESQ")
            ax.set_ylabel("PESQ (wb)")
        if state["sparsity"]:
            ax2 = ax.twinx()
            ax2.step([0] + [r["step"] for r in state["sparsity"]], [0] + [r["sparsity"] for r in state["sparsity"]],
                     "r-", where="post", label="sparsity")
            ax2.set_ylabel("conv sparsity", color="r")
        ax.set_xlabel("step")
        ax.set_title(f"{stage}: validation")
        ax.grid(alpha=0.3)
        paths.append(save_figure(fig, out_dir / f"{stage}_validation.png"))
    return paths


def spectrogram_figure(signals: dict[str, np.ndarray], sr: int, path: Path, title: str = "") -> Path:
    """Side-by-side log spectrograms (e.g. noisy / enhanced / clean) on one colour scale."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(signals), figsize=(4 * len(signals), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (name, x) in zip(axes, signals.items()):
        with np.errstate(divide="ignore"):
            ax.specgram(np.asarray(x, dtype=np.float64), NFFT=512, Fs=sr, noverlap=384, cmap="magma",
                        vmin=-130, vmax=-20)
        ax.set_title(name)
        ax.set_xlabel("s")
    axes[0].set_ylabel("Hz")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def audio_examples(items: Sequence[tuple[str, Any, Any]], outputs: dict[str, np.ndarray], sr: int,
                   out_dir: Path) -> list[Path]:
    """WAVs (noisy, enhanced, clean) and a spectrogram PNG for a few validation utterances."""
    from .audio import write_wav

    paths = []
    for utt, clean, noisy in items:
        clean, noisy = np.asarray(clean), np.asarray(noisy)
        est = outputs[utt]
        peak = max(np.abs(noisy).max(), np.abs(est).max(), np.abs(clean).max(), 1e-9)
        for name, x in (("noisy", noisy), ("enhanced", est), ("clean", clean)):
            p = out_dir / f"{utt}_{name}.wav"
            write_wav(p, 0.9 * x / peak, sr)
            paths.append(p)
        paths.append(spectrogram_figure({"noisy": noisy, "enhanced": est, "clean": clean}, sr,
                                        out_dir / f"{utt}_spectrogram.png", utt))
    return paths


def save_figure(fig: Any, path: Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path
