"""PNG figures and audio examples that runs record (training curves, spectrograms, sweeps).

matplotlib runs headless (Agg); every figure is written atomically like any other output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from effifusion.core.files import atomic_path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (stages run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_figures(hist: Sequence[dict[str, Any]], val: Sequence[dict[str, Any]],
                     sparsity: Sequence[dict[str, Any]], out_dir: Path, stage: str,
                     totals: Sequence[str] = ()) -> list[Path]:
    """Loss curves, validation PESQ and (when pruning) sparsity against step, as PNGs.

    ``hist`` rows hold step, epoch, lr and the task's losses; ``totals`` go in the right-hand panel.
    """
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if hist:
        steps = [r["step"] for r in hist]
        keys = [k for k in hist[0] if k not in ("step", "epoch", "lr")]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for k in keys:
            (axes[1] if k in totals else axes[0]).plot(
                steps, [r[k] for r in hist], label=k, lw=1)
        for ax, title in zip(axes, ("loss terms", "totals")):
            ax.set_xlabel("step")
            ax.set_title(f"{stage}: {title}")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        paths.append(save_figure(fig, out_dir / f"{stage}_losses.png"))
    if val or sparsity:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        if val:
            ax.plot([r["step"] for r in val], [r["val_pesq"] for r in val], "o-", label="val PESQ")
            ax.set_ylabel("PESQ (wb)")
        if sparsity:
            ax2 = ax.twinx()
            ax2.step([0] + [r["step"] for r in sparsity], [0] + [r["sparsity"] for r in sparsity],
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
    from effifusion.dsp.audio import write_wav

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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    return path
