"""params.yaml checked before any work: every section, every key, every value, in milliseconds.

``check_params`` walks SCHEMA (one rule per key) and raises one ConfigError naming the first bad
setting: a missing or unknown key, a value of the wrong type (``lr: fast``, ``skip_bad_files: "no"``)
or out of range (``batch_size: 0``, ``prune.amount: -0.1``). Stage scripts call ``load_settings()``
(core/config.py), which runs this check, so a bad value fails before any data is read. The
``model`` section belongs to the architecture ``model.arch`` names: the stages that build a model
check it with ``models.registry.check_model_config`` before reading data (this module must not
import model code, or every data stage would depend on it).

What is *not* here is as deliberate: no defaults (params.yaml holds every value a run used) and no
conversion (the values are used as written; core/settings.py builds the typed objects consumers read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from effifusion.core.errors import ConfigError

# Keys of settings that change only how fast a stage runs, never its result. They live in the
# `runtime` section, which dvc.yaml does not track and the resume checkpoint does not hash.
RUNTIME_SECTION = "runtime"


@dataclass(frozen=True)
class Rule:
    """One setting: a test of the value and what it must be (for the message)."""

    ok: Callable[[Any], bool]
    need: str

    def check(self, where: str, value: Any) -> None:
        try:
            good = self.ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ConfigError(f"params.yaml {where}: {value!r} is not valid ({self.need})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None) -> Rule:
    return Rule(lambda v: _is_int(v) and (lo is None or v >= lo),
                "an integer" + (f" >= {lo}" if lo is not None else ""))


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return (_is_num(v) and (lo is None or (v > lo if lo_open else v >= lo))
                and (hi is None or (v < hi if hi_open else v <= hi)))

    if lo is not None and hi is not None:
        need = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        need = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        need = "a number"
    return Rule(ok, need)


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "text")
NONEMPTY_TEXT = Rule(lambda v: isinstance(v, str) and v.strip() != "", "non-empty text")


def one_of(*values: Any) -> Rule:
    return Rule(lambda v: not isinstance(v, bool) and v in values, "one of " + ", ".join(map(str, values)))


def list_of(rule: Rule, min_len: int = 1, length: int | None = None) -> Rule:
    def ok(v: Any) -> bool:
        if not isinstance(v, list) or len(v) < min_len or (length is not None and len(v) != length):
            return False
        return all(rule.ok(x) for x in v)

    size = f"{length}" if length is not None else f"at least {min_len}"
    return Rule(ok, f"a list of {size} item(s), each {rule.need}")


MD5 = Rule(lambda v: isinstance(v, str) and len(v) == 32 and all(c in "0123456789abcdefABCDEF" for c in v),
           "an md5 checksum (32 hex digits)")
SPEAKERS = list_of(Rule(lambda v: isinstance(v, str) and v.startswith("p"), "a speaker id such as p226"))

SCHEMA: dict[str, Any] = {
    "preset": TEXT,
    "seed": integer(0),
    "audio": {"sample_rate": Rule(lambda v: v == 16000 and _is_int(v),
                                  "16000: wide-band PESQ and the models' front ends are defined at 16 kHz")},
    "corpus": {
        "name": one_of("demo", "voicebank_demand"),
        "demo": {
            "sample_rate": integer(8000), "train_speakers": SPEAKERS, "test_speakers": SPEAKERS,
            "train_utterances_per_speaker": integer(1), "test_utterances_per_speaker": integer(1),
            "min_duration_s": number(1.0), "max_duration_s": number(1.0), "unseen_noise_duration_s": number(1.0),
        },
    },
    "download": {"datashare_url": NONEMPTY_TEXT, "zenodo_url": NONEMPTY_TEXT, "local_copy": TEXT,
                 "retries": integer(1), "timeout_s": number(0, lo_open=True)},
    "prepare": {"val_speakers": SPEAKERS, "skip_bad_files": BOOL},
    "mix_unseen": {"noises": list_of(NONEMPTY_TEXT), "snrs_db": list_of(number()),
                   "utterances_per_condition": integer(1), "channel": NONEMPTY_TEXT},
    "discriminator": {"channels": integer(1)},
    "train": {
        "objective": one_of("metric_gan", "predictive", "score_matching"),
        "epochs": integer(1), "max_steps_per_epoch": integer(0), "batch_size": integer(1),
        "segment_s": number(0.1), "lr": number(0, lo_open=True), "betas": list_of(number(0, 1, hi_open=True), length=2),
        "lr_decay": number(0, 1, lo_open=True), "grad_clip": number(0),
        "optimizer": one_of("adamw", "adam"), "grad_accum_steps": integer(1),
        "loss_weights": {k: number(0) for k in ("metric", "magnitude", "phase", "complex", "time", "consistency")},
        "score_matching": {"score": number(0), "predictive": number(0), "ema_decay": number(0, 1, hi_open=True)},
        "val_every_steps": integer(1), "val_utterances": integer(1),
        "augment": {"enabled": BOOL, "prob": number(0, 1), "snr_db": list_of(number(), length=2),
                    "filter_prob": number(0, 1)},
        "amp": one_of("none", "bf16"), "compile": BOOL,
    },
    "prune": {"method": one_of("l1_unstructured", "channel", "none"), "amount": number(0, 1, hi_open=True),
              "layers": list_of(NONEMPTY_TEXT), "scope": one_of("global", "layer"),
              "epochs": integer(1), "max_steps_per_epoch": integer(0), "ramp_fraction": number(0, 1),
              "prune_every_steps": integer(1), "lr": number(0, lo_open=True)},
    "export": {"opset": integer(18), "parity_lengths_s": list_of(number(0, lo_open=True)),
               "parity_tolerance": number(0, lo_open=True),
               "sampler": Rule(lambda v: isinstance(v, dict), "a mapping of sampler settings ({} = as trained)"),
               "precision": one_of("fp32", "int8", "bf16")},
    "evaluate": {"num_spectrograms": integer(0), "rtf_seconds": number(0.1, 600)},
    "mlflow": {"experiment": NONEMPTY_TEXT},
    "pretrained": {"muse": {"url": NONEMPTY_TEXT, "md5": MD5}},
    RUNTIME_SECTION: {
        "device": one_of("auto", "cpu", "cuda"), "threads": integer(0), "dataloader_workers": integer(0),
        "pesq_workers": integer(0), "checkpoint_every_steps": integer(1), "log_every_steps": integer(1),
        "data_workers": integer(1), "evaluate_workers": integer(1), "evaluate_device": one_of("cpu", "cuda"),
    },
}


# Sections only some objectives read (train.objective -> what it needs). Another objective's params may
# leave them out; when present they are checked like any other (a preset's base carries them all).
OBJECTIVE_SECTIONS = {
    "discriminator": ("metric_gan",),
    "train.loss_weights": ("metric_gan", "predictive"),
    "train.score_matching": ("score_matching",),
}


def walk(schema: dict[str, Any], values: Any, where: str, objective: Any = None) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"params.yaml {where or 'top level'}: expected a mapping of settings, got {values!r}")
    prefix = f"{where}." if where else ""
    for key in schema:
        needed_by = OBJECTIVE_SECTIONS.get(prefix + key)
        if key not in values and (needed_by is None or objective in needed_by):
            why = f" (train.objective {objective!r} needs it)" if needed_by else ""
            raise ConfigError(f"params.yaml {prefix}{key}: missing setting{why}")
    for key, value in values.items():
        if key == "model" and not where:
            continue
        if key not in schema:
            known = ", ".join(k for k in schema)
            raise ConfigError(f"params.yaml {prefix}{key}: unknown setting (known: {known})")
        rule = schema[key]
        if isinstance(rule, dict):
            walk(rule, value, f"{prefix}{key}", objective)
        else:
            rule.check(f"{prefix}{key}", value)


def _demo_durations(demo: dict[str, Any]) -> None:
    if demo["min_duration_s"] > demo["max_duration_s"]:
        raise ConfigError(f"params.yaml corpus.demo.min_duration_s: {demo['min_duration_s']!r} is not valid "
                          f"(at most max_duration_s = {demo['max_duration_s']!r})")


def _snr_range(augment: dict[str, Any]) -> None:
    low, high = augment["snr_db"]
    if low > high:
        raise ConfigError(f"params.yaml train.augment.snr_db: {[low, high]!r} is not valid "
                          "([low, high] with low <= high)")


def _demo_speakers(demo: dict[str, Any]) -> None:
    _demo_durations(demo)
    both = sorted(set(demo["train_speakers"]) & set(demo["test_speakers"]))
    if both:
        raise ConfigError(f"params.yaml corpus.demo.test_speakers: {both} are also train_speakers "
                          "(a test speaker must be unseen in training)")


def _distinct_conditions(mix: dict[str, Any]) -> None:
    """Each (noise, SNR) names its output files (SNRs at 0.1 dB, data/mixing.snr_tag): no two may collide."""
    if len(set(mix["noises"])) < len(mix["noises"]):
        raise ConfigError(f"params.yaml mix_unseen.noises: {mix['noises']!r} is not valid (each noise once)")
    if len({round(float(s), 1) for s in mix["snrs_db"]}) < len(mix["snrs_db"]):
        raise ConfigError(f"params.yaml mix_unseen.snrs_db: {mix['snrs_db']!r} is not valid "
                          "(distinct at 0.1 dB: the SNR names the output files)")


# Checks across the settings of one (nested) section, after each value passed its rule.
CROSS_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"corpus.demo": _demo_speakers,
                                                            "train.augment": _snr_range,
                                                            "mix_unseen": _distinct_conditions}


def _at(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split(".") if dotted else ():
        values = values[part]
    return values


def check_params(params: Any) -> dict[str, Any]:
    """``params`` unchanged if every setting outside ``model`` is valid; else ConfigError naming the first bad one."""
    train = params.get("train") if isinstance(params, dict) else None
    walk(SCHEMA, params, "", train.get("objective") if isinstance(train, dict) else None)
    if "model" not in params:
        raise ConfigError("params.yaml model: missing setting")
    for where, check in CROSS_CHECKS.items():
        check(_at(params, where))
    return params


def check_section(where: str, values: Any) -> dict[str, Any]:
    """One section's mapping (``where``: its dotted name, ``export``) checked as check_params checks it there.

    Sections only some objectives read (OBJECTIVE_SECTIONS) may be absent inside it.
    """
    walk(_at(SCHEMA, where), values, where)
    for inner, check in CROSS_CHECKS.items():
        if inner == where or inner.startswith(where + "."):
            check(_at(values, inner[len(where) + 1:]))
    return values
