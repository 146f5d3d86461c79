"""SGMSE+ (Richter et al. 2023) and the joint generative/predictive model (Shi et al., ICASSP 2024).

``sgmse``: NCSN++ as a score model of the OUVE SDE on SGMSE+'s compressed complex spectrogram
(sp-uhh/sgmse @ ae690e8, MIT; docs/models.md, SGMSE+): input Re/Im of (x_t, y), the 4-channel output
divided by t, a 1×1 conv to Re/Im, score = −output. 65,590,694 parameters at nf 128,
ch_mult (1,1,2,2,2,2,2), 2 blocks per level, attention at 16 bins (SGMSE+: 65.6 M).

``gp_sgmse``: the same encoder shared by the score decoder and a second, predictive decoder (same
up-path, no 1/t, its own 1×1 output conv) that maps the noisy spectrogram to a clean estimate x̂:
106,782,668 parameters (the paper: 106 M). [INF: the paper's text is not public; the predictive pass
feeds the encoder (x = y, y, t = 1), like StoRM's predictive network that sees y alone, so x̂ is a
deterministic function of y that the sampler's first and final fusions can use.]

Both enhance through diffusion/enhance.py (numpy STFT, sampler and noise), with this module's networks
as callables; ONNX export covers the networks (``export_networks``), the runtime runs the same sampler.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from effifusion.diffusion import spectrum
from effifusion.diffusion.enhance import enhance_normalised
from effifusion.diffusion.sampler import SamplerSettings, settings_with
from effifusion.diffusion.sde import OuveSde
from effifusion.dsp.stft import StftFrontEnd
from effifusion.models.base import DiffusionModel
from effifusion.models.cost import traced_macs
from effifusion.models.sgmse.config import SgmseConfig
from effifusion.models.sgmse.layers import conv
from effifusion.models.sgmse.ncsnpp import Decoder, Encoder


def sgmse_config() -> dict[str, Any]:
    """SGMSE+'s published configuration (sp-uhh/sgmse defaults): 65,590,694 parameters."""
    return {"arch": "sgmse", "n_fft": 510, "hop_length": 128, "win_length": 510, "compress_factor": 0.5,
            "spec_scale": 0.15, "nf": 128, "ch_mult": [1, 1, 2, 2, 2, 2, 2], "res_blocks": 2,
            "attn_resolutions": [16], "fourier_scale": 16.0, "sde": OuveSde().config(),
            "sampler": SamplerSettings(mode="generative", first_fusion=False, final_fusion=False).config()}


def gp_sgmse_config() -> dict[str, Any]:
    """The joint model at the paper's size (106 M) with both fusions on [INF: start step and weight]."""
    return {**sgmse_config(), "arch": "gp_sgmse",
            "sampler": SamplerSettings(mode="joint", first_fusion=True, start_step=15, final_fusion=True,
                                       fusion_alpha=0.5, fusion_beta=0.5).config()}


class Sgmse(DiffusionModel):
    """NCSN++ score model; ``score(x, y, t)`` on [B, 2, F, T] Re/Im channels."""

    arch = "sgmse"
    has_predictive = False

    Config = SgmseConfig

    def __init__(self, cfg: SgmseConfig, sample_rate: int):
        super().__init__(cfg, sample_rate)
        self.frontend = StftFrontEnd.from_config(cfg, normalisation="max")
        self.n_bins = self.frontend.n_bins
        self.spec_scale = cfg.spec_scale
        self.sde = OuveSde(cfg.sde.theta, cfg.sde.sigma_min, cfg.sde.sigma_max, cfg.sde.t_eps)
        # settings_with, not SamplerSettings(**...): older checkpoints store a single fusion_weight
        self.sampler = settings_with(cfg.sampler, None, self.has_predictive, "model.", self.n_bins)
        self.time_multiple = 2 ** (len(cfg.ch_mult) - 1)
        shape = (cfg.nf, list(cfg.ch_mult), cfg.res_blocks, list(cfg.attn_resolutions))
        self.encoder = Encoder(*shape, self.n_bins, cfg.fourier_scale)
        self.score_decoder = Decoder(self.encoder, *shape, self.n_bins)
        self.score_out = conv(4, 2, 1)
        if self.has_predictive:
            self.predictive_decoder = Decoder(self.encoder, *shape, self.n_bins)
            self.predictive_out = conv(4, 2, 1)

    def config(self) -> dict[str, Any]:
        return {**self.cfg.to_dict(), "sampler": self.sampler.config()}  # the sampler as it is now

    def with_sampler(self, **overrides: Any) -> "Sgmse":
        self.sampler = settings_with(self.sampler.config(), overrides, self.has_predictive, bins=self.n_bins)
        return self

    # -- the networks -----------------------------------------------------------------------------

    def score(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score of the perturbed spectrogram: −out(decoder(encoder([x, y], t)) / t), [B, 2, F, T]."""
        h, hs, temb = self.encoder(torch.cat([x, y], dim=1), t)
        pyramid = self.score_decoder(h, hs, temb) / t[:, None, None, None]
        return -self.score_out(pyramid)

    def predict(self, y: torch.Tensor) -> torch.Tensor:
        """The predictive decoder's clean estimate x̂ from y alone (encoder input (y, y), t = 1)."""
        if not self.has_predictive:
            raise ValueError(f"{self.arch} has no predictive decoder")
        t = torch.ones(y.shape[0], device=y.device, dtype=y.dtype)
        h, hs, temb = self.encoder(torch.cat([y, y], dim=1), t)
        return self.predictive_out(self.predictive_decoder(h, hs, temb))

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, predictive: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(score, x̂ or None): the training step's one call (one call keeps DDP's gradient hooks in step)."""
        return self.score(x, y, t), (self.predict(y) if predictive else None)

    # -- spectra (training) -----------------------------------------------------------------------

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] -> compressed complex spectrogram as [B, 2, F, T] (the numpy twin: diffusion/spectrum.py)."""
        f = self.frontend
        window = torch.hann_window(f.win_length, device=wav.device, dtype=wav.dtype)
        spec = torch.stft(wav, f.n_fft, hop_length=f.hop_length, win_length=f.win_length, window=window,
                          center=True, pad_mode="reflect", return_complex=True)
        mag = spec.abs()
        spec = self.spec_scale * spec * torch.where(mag > 0, mag, torch.ones_like(mag)) ** (f.compress_factor - 1)
        return torch.stack([spec.real, spec.imag], dim=1)

    def pad_frames(self, spec: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(spec, (0, (-spec.shape[-1]) % self.time_multiple))

    # -- inference --------------------------------------------------------------------------------

    def numpy_networks(self, device: torch.device | None = None) -> tuple[Any, Any]:
        """(score_fn, predict_fn or None) on complex numpy spectrograms: the callables the numpy sampler
        runs (enhance, and the export's fit of the final fusion on the same outputs)."""
        device = device if device is not None else next(self.parameters()).device

        def run(fn: Any, *arrays: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return fn(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays)).float().cpu().numpy()

        def score_fn(xc: np.ndarray, yc: np.ndarray, t: np.ndarray) -> np.ndarray:
            return spectrum.as_complex(run(self.score, spectrum.as_channels(xc), spectrum.as_channels(yc), t))

        def predict_fn(yc: np.ndarray) -> np.ndarray:
            return spectrum.as_complex(run(self.predict, spectrum.as_channels(yc)))

        return score_fn, (predict_fn if self.has_predictive else None)

    def enhance_normalised(self, x: torch.Tensor) -> torch.Tensor:
        device, dtype = x.device, x.dtype
        score_fn, predict_fn = self.numpy_networks(device)
        f = self.frontend
        out = enhance_normalised(x.detach().float().cpu().numpy(), n_fft=f.n_fft, hop=f.hop_length,
                                 alpha=f.compress_factor, beta=self.spec_scale, time_multiple=self.time_multiple,
                                 score_fn=score_fn, predict_fn=predict_fn, sde=self.sde,
                                 settings=self.sampler)
        return torch.from_numpy(out).to(device=device, dtype=dtype)

    def export_module(self) -> nn.Module:
        return ScoreNetwork(self)

    def export_networks(self) -> dict[str, nn.Module]:
        """What ONNX export writes: the score network, and the predictive network for the joint model."""
        nets: dict[str, nn.Module] = {"score": ScoreNetwork(self)}
        if self.has_predictive:
            nets["predictive"] = PredictiveNetwork(self)
        return nets

    def evaluations(self) -> int:
        return self.sampler.evaluations()

    def macs(self, n_frames: int) -> dict[str, int]:
        """MACs of one score evaluation (and one predictive pass) on ``n_frames`` frames, batch 1; "total"
        is one utterance's sampler cost (evaluations × per-evaluation MACs)."""
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        frames = n_frames + (-n_frames) % self.time_multiple
        x = torch.zeros(1, 2, self.n_bins, frames)
        t = torch.full((1,), 0.5)
        with torch.no_grad():
            nets = self.export_networks()
            per_score = traced_macs(nets["score"], lambda: nets["score"](x, x, t))["total"]
            out = {"score_evaluation": per_score}
            per_pred = 0
            if self.has_predictive:
                per_pred = traced_macs(nets["predictive"], lambda: nets["predictive"](x))["total"]
                out["predictive_evaluation"] = per_pred
        s = self.sampler
        n_score = s.evaluations() - (s.mode != "generative")
        out["evaluations"] = s.evaluations()
        out["total"] = n_score * per_score + (s.mode != "generative") * per_pred
        return out


class GpSgmse(Sgmse):
    arch = "gp_sgmse"
    has_predictive = True


class ScoreNetwork(nn.Module):
    """Export wrapper: (x [B, 2, F, T], y [B, 2, F, T], t [B]) -> score [B, 2, F, T]."""

    def __init__(self, model: Sgmse):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.score(x, y, t)


class PredictiveNetwork(nn.Module):
    """Export wrapper: y [B, 2, F, T] -> x̂ [B, 2, F, T]."""

    def __init__(self, model: Sgmse):
        super().__init__()
        self.model = model

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.model.predict(y)
