"""The model contract: a new architecture plugs in by registering one class, and every shared part
(checkpoints, the trainer with either objective, ONNX export with parity) works for it unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from effifusion.core.errors import ConfigError
from effifusion.core.params import integer
from effifusion.core.settings import AudioConfig, ExportConfig, ModelConfig
from effifusion.dsp.stft import StftFrontEnd
from effifusion.inference.export import export_onnx
from effifusion.models import registry
from effifusion.models.base import EnhancementModel
from effifusion.models.cost import conv_chain_macs
from effifusion.training.stages import train_dense
from helpers import make_prepared, tiny_params


@dataclass(frozen=True)
class ToyConfig(ModelConfig):
    RULES: ClassVar[dict] = {"channels": integer(1)}
    channels: int


class ToyMasker(EnhancementModel):
    """A two-conv magnitude masker: the smallest model of the magnitude-phase family."""

    arch = "toy"
    Config = ToyConfig

    def __init__(self, cfg: ToyConfig, sample_rate: int):
        super().__init__(cfg, sample_rate)
        self.frontend = StftFrontEnd.from_config(cfg)
        self.in_conv = nn.Conv2d(2, cfg.channels, 3, padding=1)
        self.out_conv = nn.Conv2d(cfg.channels, 1, 1)

    def forward(self, mag: torch.Tensor, pha: torch.Tensor):
        x = torch.stack((mag, pha), dim=1)  # [B, 2, F, T]
        mask = 2 * torch.sigmoid(self.out_conv(torch.relu(self.in_conv(x))))[:, 0]
        out = mag * mask
        return out, pha, torch.stack((out * torch.cos(pha), out * torch.sin(pha)), dim=-1)

    def enhance_normalised(self, x: torch.Tensor) -> torch.Tensor:
        mag, pha, _ = self.frontend.analyse(x)
        out, pha, _ = self(mag, pha)
        return self.frontend.synthesise(out, pha, length=x.shape[-1])

    def macs(self, n_frames: int) -> dict[str, int]:
        total, _ = conv_chain_macs(self, (self.frontend.n_bins, n_frames))
        return {"total": total}


TOY_CFG = {"arch": "toy", "n_fft": 256, "hop_length": 64, "win_length": 256, "compress_factor": 0.3, "channels": 4}


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(registry.ARCHITECTURES, "toy", ToyMasker)


def test_unknown_arch_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"model.arch: 'nope' is not a known architecture \(known: effifusion_gan"):
        registry.build_model({**TOY_CFG, "arch": "nope"}, 16000)


def test_checkpoint_reloads_without_params(toy_registered, tmp_path):
    torch.manual_seed(0)
    model = registry.build_model(TOY_CFG, 16000)
    registry.save_checkpoint(tmp_path / "toy.pt", model, extra={"note": "x"})
    loaded, extra = registry.load_checkpoint(tmp_path / "toy.pt")
    assert isinstance(loaded, ToyMasker) and loaded.config() == TOY_CFG and extra == {"note": "x"}
    wav = torch.randn(2, 3001) * 0.1
    with torch.no_grad():
        assert torch.equal(model.eval().enhance(wav), loaded.enhance(wav))
        assert loaded.enhance(wav[:, :10]).shape == (2, 10)  # shorter than n_fft: padded and cropped


def test_export_with_parity(toy_registered, tmp_path):
    torch.manual_seed(0)
    registry.save_checkpoint(tmp_path / "toy.pt", registry.build_model(TOY_CFG, 16000))
    report = export_onnx(tmp_path / "toy.pt", tmp_path / "onnx", ExportConfig(18, (0.3, 1.0001), 1e-4),
                         AudioConfig(16000))
    assert report["onnx_parity_max_abs"] <= 1e-4


@pytest.mark.parametrize("objective", ["metric_gan", "predictive"])
def test_trainer_runs_the_new_architecture(toy_registered, tmp_path, objective):
    params = tiny_params(train__objective=objective, train__epochs=1)
    params["model"] = dict(TOY_CFG)
    prepared = make_prepared(tmp_path / "prepared", n_train=4, n_val=2)
    m = train_dense(params, prepared_dir=prepared, out_dir=tmp_path / "m", metrics_path=tmp_path / "m.json",
                    plots_dir=tmp_path / "p", resume_dir=tmp_path / "ck", track=False)
    toy = ToyMasker.from_config(TOY_CFG, 16000)
    assert m["steps"] == 2 and m["params_total"] == sum(p.numel() for p in toy.parameters())
    loaded, _ = registry.load_checkpoint(tmp_path / "m" / "model.pt")
    assert isinstance(loaded, ToyMasker)
    assert ("d_loss" in m) == (objective == "metric_gan")


def test_every_architecture_declares_its_kind():
    """runtime, objectives and exporter are declared on the class (export, backends and tasks dispatch on
    them): a diffusion model is a DiffusionModel and trains by score matching, the others are graphs."""
    from effifusion.models.base import RUNTIMES, DiffusionModel
    from effifusion.training.tasks import TASKS

    for arch in registry.ARCHITECTURES:
        cls = registry.model_class(arch)
        assert cls.runtime in RUNTIMES, arch
        assert cls.objectives and set(cls.objectives) <= set(TASKS), arch
        assert cls.exporter == ("networks" if cls.runtime == "diffusion" else "waveform"), arch
        assert issubclass(cls, DiffusionModel) == (cls.runtime == "diffusion"), arch
    assert registry.model_class("sgmse").objectives == ("score_matching",)
    assert registry.model_class("saf").objectives[0] == "predictive"  # its paper has no discriminator
    assert registry.model_class("effifusion_gan").objectives[0] == "metric_gan"


@pytest.mark.parametrize("arch, objective", [("sgmse", "metric_gan"), ("gp_sgmse", "predictive"),
                                             ("effifusion_gan", "score_matching"), ("saf", "score_matching")])
def test_an_objective_that_cannot_train_the_model_is_refused(arch, objective):
    with pytest.raises(ConfigError, match=rf"^train.objective: '{objective}' cannot train model.arch '{arch}' "
                                          r"\(its objectives: [a-z_, ]+; .* trains [a-z_, ]+\)$"):
        registry.check_objective({"arch": arch}, objective)
    registry.check_objective({"arch": arch}, registry.model_class(arch).objectives[0])  # its own: accepted


def test_the_trainer_refuses_the_objective_before_reading_data(toy_registered, tmp_path):
    params = tiny_params(train__objective="score_matching", train__epochs=1)
    params["model"] = dict(TOY_CFG)
    with pytest.raises(ConfigError, match="^train.objective: 'score_matching' cannot train model.arch 'toy'"):
        train_dense(params, prepared_dir=tmp_path / "not-there", out_dir=tmp_path / "m",
                    metrics_path=tmp_path / "m.json", plots_dir=tmp_path / "p", resume_dir=tmp_path / "ck",
                    track=False)
