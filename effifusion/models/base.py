"""The model contract: what every architecture provides, so the rest of the package needs no edits.

A model is built from its params section (``model:`` in params.yaml, ``arch`` naming it), owns its
front end (STFT settings, compression, normalisation, the shortest input), enhances waveforms
(``enhance``: [B, N] -> [B, N], used by validation, ``effifusion enhance``, evaluation and export
parity), names the layers pruning may touch, says what ONNX export traces, and counts its own MACs.
``config()`` returns what rebuilds it, so a checkpoint ({arch, config, sample_rate, weights})
reloads without params.yaml (models/registry.py).

Three class attributes say what kind of model it is, so export, the inference backends, the training
tasks and ``compare`` dispatch on them instead of probing for methods:

- ``runtime``: how it enhances at inference. ``"graph"``: one waveform-to-waveform network (the
  magnitude-phase mask models: EffiFusion-GAN, MUSE, IMSE, SAF). ``"diffusion"``: networks called by a
  sampler that runs outside them (``DiffusionModel``: SGMSE+, the joint model).
- ``objectives``: the ``train.objective`` values that can train it (training/tasks/); the first is the
  one its papers use.
- ``exporter``: what ONNX export writes. ``"waveform"``: ``export_module()`` as one graph with its model
  card (inference/export.py). ``"networks"``: ``export_networks()``, one file per network, the sampler
  in the torch-free runtime (inference/diffusion_export.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from effifusion.core.settings import ModelConfig
from effifusion.dsp.segments import enhance_in_segments
from effifusion.dsp.stft import StftFrontEnd

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


class EnhancementModel(nn.Module):
    """Base class of every architecture (see the module docstring for the contract)."""

    arch: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]  # its params section's type (models/<arch>/config.py)
    runtime: ClassVar[str] = "graph"
    objectives: ClassVar[tuple[str, ...]] = ("metric_gan", "predictive")
    exporter: ClassVar[str] = "waveform"
    frontend: StftFrontEnd
    sample_rate: int
    cfg: ModelConfig

    def __init__(self, cfg: ModelConfig, sample_rate: int):
        """The one way a model is built: from its typed config (``from_config`` parses a mapping into it)."""
        super().__init__()
        self.cfg, self.sample_rate = cfg, sample_rate

    @classmethod
    def check_config(cls, config: Any) -> ModelConfig:
        """params.yaml's ``model`` mapping checked (keys, types, ranges, agreement) and typed; ConfigError
        names the first bad key. Milliseconds: stages call it before reading any data."""
        return cls.Config.parse(config, cls.arch)

    @classmethod
    def from_config(cls, config: Any, sample_rate: int) -> "EnhancementModel":
        """The model a ``model`` mapping (params.yaml's, or a checkpoint's) describes."""
        return cls(cls.check_config(config), sample_rate)

    def config(self) -> dict[str, Any]:
        """The params section that rebuilds this model (``arch`` included): what a checkpoint stores."""
        return self.cfg.to_dict()

    @property
    def min_samples(self) -> int:
        return self.frontend.min_samples

    def enhance(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform [B, N] -> enhanced [B, N]: normalise, pad to the front end's minimum, enhance, undo.

        Any N >= 1 works. Grad mode is left to the caller (wrap in torch.no_grad() for inference).
        The same code runs while ONNX export traces it (the front end switches to DFT bases).
        """
        if wav.dim() != 2 or wav.shape[-1] < 1:
            raise ValueError(f"expected a waveform batch [B, N] with N >= 1, got shape {tuple(wav.shape)}")
        n = wav.shape[-1]
        x, gain = self.frontend.normalise(wav)
        if self.frontend.segment_samples:  # MUSE's protocol: one gain per utterance, fixed-length segments
            # one segment at a time: torch.stft rounds a batch differently, and MUSE's weights respond to
            # the rounding of its reflected first frame (dsp/stft.py, exact_polar), so batch 1 as MUSE ran it
            y = enhance_in_segments(self.enhance_normalised, x, self.frontend.segment_samples,
                                    concat=torch.cat, pad=lambda t, k: nn.functional.pad(t, (0, k)), batch=1)
            return y / gain
        x = self.frontend.pad(x)
        y = self.enhance_normalised(x)
        return y.narrow(-1, 0, n) / gain

    def enhance_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N] normalised and padded -> [B, N] enhanced; the architecture's own part of ``enhance``."""
        raise NotImplementedError

    def prunable_modules(self) -> list[tuple[str, nn.Module]]:
        """(qualified name, module) of the layers pruning may touch: every convolution by default."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, CONV_TYPES)]

    def export_module(self) -> nn.Module:
        """What ONNX export traces: waveform [B, N] float32 -> enhanced [B, N]. A segmenting front end
        exports one segment's work (no normalisation): the runtime normalises and segments around it."""
        return SegmentModel(self) if self.frontend.segment_samples else WaveformModel(self)

    def macs(self, n_frames: int) -> dict[str, int]:
        """Analytic multiply-accumulates of one forward pass on ``n_frames`` frames; key "total"."""
        raise NotImplementedError


class MagnitudePhaseModel(EnhancementModel):
    """The magnitude-phase family (MP-SENet's interface, which the metric-GAN and predictive tasks train):
    ``forward(mag, pha)`` on the front end's compressed magnitude and phase [B, F, T] returns
    (magnitude, phase [B, F, T], compressed complex [B, F, T, 2]); ``enhance_normalised`` is analysis,
    forward, synthesis."""

    n_bins: int

    def enhance_normalised(self, x: torch.Tensor) -> torch.Tensor:
        mag, pha, _ = self.frontend.analyse(x)
        out_mag, out_pha, _ = self(mag, pha)
        return self.frontend.synthesise(out_mag, out_pha, length=x.shape[-1])

    def check_bins(self, mag: torch.Tensor) -> None:
        if mag.shape[1] != self.n_bins:
            raise ValueError(f"expected {self.n_bins} frequency bins ([B, F, T]), got shape {tuple(mag.shape)}")

    @staticmethod
    def polar(mag: torch.Tensor, pha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mag, pha, complex [..., 2]): forward's return value."""
        return mag, pha, torch.stack((mag * torch.cos(pha), mag * torch.sin(pha)), dim=-1)


class DiffusionModel(EnhancementModel):
    """A model that enhances by sampling: a score network (and, for the joint model, a predictive one)
    called by a reverse-SDE sampler (diffusion/) whose settings are not weights and may change after
    training (``with_sampler``)."""

    runtime: ClassVar[str] = "diffusion"
    objectives: ClassVar[tuple[str, ...]] = ("score_matching",)
    exporter: ClassVar[str] = "networks"
    has_predictive: ClassVar[bool] = False
    sde: Any       # diffusion.sde.OuveSde
    sampler: Any   # diffusion.sampler.SamplerSettings

    def with_sampler(self, **overrides: Any) -> "DiffusionModel":
        """Change sampler settings in place (inference only: the weights do not depend on them)."""
        raise NotImplementedError

    def export_networks(self) -> dict[str, nn.Module]:
        """What ONNX export writes, by name: "score", and "predictive" for a model that has one."""
        raise NotImplementedError


RUNTIMES = ("graph", "diffusion")


class WaveformModel(nn.Module):
    """Export wrapper: forward = the model's ``enhance`` (its front end switches to DFT bases)."""

    def __init__(self, model: EnhancementModel):
        super().__init__()
        self.model = model

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.enhance(wav)


class SegmentModel(nn.Module):
    """Export wrapper of a segmenting model: forward = ``enhance_normalised`` of already-normalised
    segments (the runtime applies the utterance's gain and dsp/segments.py's plan around the graph)."""

    def __init__(self, model: EnhancementModel):
        super().__init__()
        self.model = model

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        n = wav.shape[-1]
        return self.model.enhance_normalised(self.model.frontend.pad(wav)).narrow(-1, 0, n)
