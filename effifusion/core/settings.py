"""params.yaml as typed, frozen objects: one dataclass per section, built once after the schema check.

``parse_params(d)`` runs ``check_params`` (core/params.py: the same one-line ConfigError for every bad
setting) and then builds ``Params``: each value typed as params.yaml holds it (int, float, bool, str),
lists as tuples, and an integer written for a float setting (``timeout_s: 60``) as a float: the one
and only conversion. Consumers take these objects and neither re-check nor re-cast a value.

``Params.model`` stays the mapping as written: its keys belong to the architecture ``model.arch`` names,
whose own ModelConfig subclass (models/<arch>/config.py, parsed by ``ModelConfig.parse`` with the same
rules and messages) the model is built from. Mappings too: ``export.sampler`` (a diffusion model's sampler
checks it) and ``Params.raw``, the checked dict as written, for what needs the file's values: params_hash,
MLflow's params, DVC. A section's ``to_dict()`` gives its
values as params.yaml wrote them (resume identities and export keys hash them).

Sections that only some objectives read (core/params.OBJECTIVE_SECTIONS: ``discriminator``,
``train.loss_weights``, ``train.score_matching``) are None when absent.

``as_settings(x, kind)`` is for the stage entry points that tests also call with plain dicts: ``x`` when
already typed, else ``x`` checked and built as ``kind`` (Params, or one section's class).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional, TypeVar

from effifusion.core.errors import ConfigError
from effifusion.core.params import Rule, check_params, check_section, integer, number, walk


@dataclass(frozen=True)
class Section:
    """A section (or nested section) of params.yaml; ``WHERE`` is its dotted name there."""

    WHERE: ClassVar[str] = ""
    _raw: Optional[dict[str, Any]] = field(default=None, init=False, repr=False, compare=False)

    def invalid(self, key: str, need: str) -> None:
        """ConfigError naming the setting ``key`` of this section: what the schema says for a bad value."""
        raise ConfigError(f"params.yaml {self.WHERE}.{key}: {getattr(self, key)!r} is not valid ({need})")

    def to_dict(self) -> dict[str, Any]:
        """The section as params.yaml wrote it when parsed (else from the fields: tuples as lists)."""
        if self._raw is not None:
            return self._raw
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.init}


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class AudioConfig(Section):
    WHERE: ClassVar[str] = "audio"
    sample_rate: int


@dataclass(frozen=True)
class DemoCorpusConfig(Section):
    WHERE: ClassVar[str] = "corpus.demo"
    sample_rate: int
    train_speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    train_utterances_per_speaker: int
    test_utterances_per_speaker: int
    min_duration_s: float
    max_duration_s: float
    unseen_noise_duration_s: float


@dataclass(frozen=True)
class CorpusConfig(Section):
    WHERE: ClassVar[str] = "corpus"
    name: str
    demo: DemoCorpusConfig


@dataclass(frozen=True)
class DownloadConfig(Section):
    WHERE: ClassVar[str] = "download"
    datashare_url: str
    zenodo_url: str
    local_copy: str
    retries: int
    timeout_s: float


@dataclass(frozen=True)
class PrepareConfig(Section):
    WHERE: ClassVar[str] = "prepare"
    val_speakers: tuple[str, ...]
    skip_bad_files: bool


@dataclass(frozen=True)
class MixUnseenConfig(Section):
    WHERE: ClassVar[str] = "mix_unseen"
    noises: tuple[str, ...]
    snrs_db: tuple[float, ...]
    utterances_per_condition: int
    channel: str


@dataclass(frozen=True)
class DiscriminatorConfig(Section):
    WHERE: ClassVar[str] = "discriminator"
    channels: int


@dataclass(frozen=True)
class LossWeights(Section):
    WHERE: ClassVar[str] = "train.loss_weights"
    metric: float
    magnitude: float
    phase: float
    complex: float
    time: float
    consistency: float


@dataclass(frozen=True)
class ScoreMatchingConfig(Section):
    WHERE: ClassVar[str] = "train.score_matching"
    score: float
    predictive: float
    ema_decay: float


@dataclass(frozen=True)
class AugmentConfig(Section):
    WHERE: ClassVar[str] = "train.augment"
    enabled: bool
    prob: float
    snr_db: tuple[float, float]
    filter_prob: float


@dataclass(frozen=True)
class TrainConfig(Section):
    WHERE: ClassVar[str] = "train"
    objective: str
    epochs: int
    max_steps_per_epoch: int
    batch_size: int
    segment_s: float
    lr: float
    betas: tuple[float, float]
    lr_decay: float
    grad_clip: float
    optimizer: str
    grad_accum_steps: int
    loss_weights: Optional[LossWeights]
    score_matching: Optional[ScoreMatchingConfig]
    val_every_steps: int
    val_utterances: int
    augment: AugmentConfig
    amp: str
    compile: bool


@dataclass(frozen=True)
class PruneConfig(Section):
    WHERE: ClassVar[str] = "prune"
    method: str
    amount: float
    layers: tuple[str, ...]
    scope: str
    epochs: int
    max_steps_per_epoch: int
    ramp_fraction: float
    prune_every_steps: int
    lr: float


@dataclass(frozen=True)
class ExportConfig(Section):
    WHERE: ClassVar[str] = "export"
    opset: int
    parity_lengths_s: tuple[float, ...]
    parity_tolerance: float
    sampler: dict[str, Any] = field(default_factory=dict)  # overrides of model.sampler ({} = as trained)
    precision: str = "fp32"  # fp32 | int8 | bf16: a reduced-precision model written beside fp32 (inference/quantize.py)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    WHERE: ClassVar[str] = "evaluate"
    num_spectrograms: int
    rtf_seconds: float


@dataclass(frozen=True)
class MlflowConfig(Section):
    WHERE: ClassVar[str] = "mlflow"
    experiment: str


@dataclass(frozen=True)
class PublishedCheckpoint(Section):
    WHERE: ClassVar[str] = "pretrained.muse"
    url: str
    md5: str


@dataclass(frozen=True)
class PretrainedConfig(Section):
    WHERE: ClassVar[str] = "pretrained"
    muse: PublishedCheckpoint


@dataclass(frozen=True)
class RuntimeConfig(Section):
    WHERE: ClassVar[str] = "runtime"
    device: str
    threads: int
    dataloader_workers: int
    pesq_workers: int
    checkpoint_every_steps: int
    log_every_steps: int
    data_workers: int
    evaluate_workers: int
    evaluate_device: str


@dataclass(frozen=True)
class Params(Section):
    """All of params.yaml; ``raw`` is the checked dict as written (hashing, MLflow params, DVC)."""

    preset: str
    seed: int
    audio: AudioConfig
    corpus: CorpusConfig
    download: DownloadConfig
    prepare: PrepareConfig
    mix_unseen: MixUnseenConfig
    model: dict[str, Any]
    discriminator: Optional[DiscriminatorConfig]
    train: TrainConfig
    prune: PruneConfig
    export: ExportConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig
    pretrained: PretrainedConfig
    runtime: RuntimeConfig

    @property
    def raw(self) -> dict[str, Any]:
        return self.to_dict()


S = TypeVar("S", bound=Section)


def _typed(hint: Any, value: Any) -> Any:
    """``value`` as ``hint`` says: a Section built, a list as a tuple, an int for a float as a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(types, "UnionType", None)):  # Optional[X]: None when absent
        return None if value is None else _typed(next(a for a in args if a is not type(None)), value)
    if isinstance(hint, type) and issubclass(hint, Section):
        return _build(hint, value)
    if origin is tuple:
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_typed(h, v) for h, v in zip(items, value))
    if hint is float:
        return float(value)
    return value


def _build(cls: type[S], values: dict[str, Any]) -> S:
    hints = typing.get_type_hints(cls)
    obj = cls(**{f.name: _typed(hints[f.name], values.get(f.name)) for f in fields(cls) if f.init})
    object.__setattr__(obj, "_raw", values)
    return obj


def parse_params(params: dict[str, Any]) -> Params:
    """``params`` checked (core/params.check_params: ConfigError naming the first bad setting), then typed."""
    return _build(Params, check_params(params))


def parse_section(cls: type[S], values: Any) -> S:
    """One section's mapping (``params["export"]``) checked like params.yaml's and built as ``cls``."""
    return _build(cls, check_section(cls.WHERE, values))


def as_settings(x: Any, kind: type[S] = Params) -> S:  # type: ignore[assignment]
    """``x`` if it is already a ``kind``, else the mapping ``x`` checked and built as one (stage entry points)."""
    if isinstance(x, kind):
        return x
    return parse_params(x) if kind is Params else parse_section(kind, x)  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelConfig(Section):
    """params.yaml's ``model`` section for one architecture: the front end's four keys here, the rest in a
    subclass (models/<arch>/config.py) with RULES for its keys (core/params rules: the schema's messages)
    and ``check`` for settings that must agree. ``parse`` is the one way a model's settings are read.

    ``to_dict`` gives the section as written, in the fields' order: what a checkpoint stores to rebuild it.
    """

    WHERE: ClassVar[str] = "model"
    RULES: ClassVar[dict[str, Any]] = {}
    arch: str
    n_fft: int
    hop_length: int
    win_length: int
    compress_factor: float

    @classmethod
    def parse(cls: type[M], values: Any, arch: str) -> M:
        """``values`` checked key by key (missing, unknown, invalid: one ConfigError line) and built."""
        rules = {"arch": Rule(lambda v: v == arch, f"{arch!r} for this class"), **FRONT_END_RULES, **cls.RULES}
        walk(rules, values, cls.WHERE)
        config = _build(cls, values)
        if config.win_length > config.n_fft:
            config.invalid("win_length", "must be <= n_fft")
        config.check()
        return config

    def check(self) -> None:
        """ConfigError (``self.invalid``) when settings disagree; each key alone is checked by RULES."""

    def to_dict(self) -> dict[str, Any]:
        raw = self._raw if self._raw is not None else super().to_dict()
        return {f.name: raw[f.name] for f in fields(self) if f.init}


M = TypeVar("M", bound=ModelConfig)
FRONT_END_RULES = {"n_fft": integer(1), "hop_length": integer(1), "win_length": integer(1),
                   "compress_factor": number(0, lo_open=True)}
POSITIVE = number(0, lo_open=True)
