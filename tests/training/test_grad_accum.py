"""Gradient accumulation (train.grad_accum_steps): k micro-batches per optimiser step equal one batch of k
times the size, for each objective, in the task and through the trainer (steps, resume); BatchNorm makes it
approximate; train.optimizer picks the optimiser of every network."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from effifusion.core.errors import ConfigError
from effifusion.core.settings import TrainConfig, parse_section
from effifusion.models.registry import build_model, load_checkpoint
from effifusion.models.sgmse.model import sgmse_config
from effifusion.training.stages import train_dense
from effifusion.training.tasks import task_class
from effifusion.training.tasks.base import make_optimizer, micro_slices
from helpers import ROOT, make_prepared, synthetic_speech, tiny_params

BATCH, SAMPLES = 4, 8000


class ItemPesq:
    """PESQ's pool interface with an instant per-item score of the estimate alone: the same item gets the
    same score however the items are grouped into batches (real PESQ would too, only slower)."""

    class _Result:
        def __init__(self, scores: np.ndarray):
            self.scores = scores

        def result(self) -> np.ndarray:
            return self.scores.copy()

    def submit(self, clean: np.ndarray, est: np.ndarray) -> "ItemPesq._Result":
        return self._Result(2.0 + np.tanh(10 * est.std(axis=-1)).astype(np.float64))


def batches(n_steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    out = []
    for s in range(n_steps):
        clean = np.stack([synthetic_speech(SAMPLES / 16000, 10 * s + i) for i in range(BATCH)])
        noisy = clean + 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
        dtype = torch.get_default_dtype()
        out.append((torch.from_numpy(clean).to(dtype), torch.from_numpy(noisy).to(dtype)))
    return out


def gan_params(objective: str = "metric_gan", num_tsblocks: int = 0) -> dict:
    """EffiFusion-GAN at tiny size; num_tsblocks 0 leaves out the conformers, the model's only BatchNorm."""
    params = tiny_params(train__objective=objective)
    params["model"].update(channels=4, num_tsblocks=num_tsblocks)
    params["discriminator"]["channels"] = 4
    return params


def diffusion_params() -> dict:
    params = tiny_params(train__objective="score_matching")
    params["model"] = {**sgmse_config(), "nf": 8, "ch_mult": [1, 2, 2], "res_blocks": 1,
                       "attn_resolutions": [64]}
    params["train"]["score_matching"] = {"score": 1.0, "predictive": 0.0, "ema_decay": 0.9}
    return params


@pytest.fixture
def float64():
    """Models and data in float64. In float32 the two runs agree to rounding (~1e-7), but Adam divides by
    √v, and elements with a tiny second moment turn that into weight differences up to ~1e-5 relative; in
    float64 the agreement is ~1e-14, so a tolerance far below any real mistake's effect is safe."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def new_task(params: dict, k: int):
    params = copy.deepcopy(params)
    params["train"]["grad_accum_steps"] = k
    torch.manual_seed(0)
    model = build_model(params["model"], 16000)
    task = task_class(params["train"]["objective"])(model, params, 1e-3, torch.device("cpu"), pesq=ItemPesq())
    for net in task.modules():
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):  # a batch of another shape draws other masks
                m.p = 0.0
    return task


def warm_state(params: dict, clean: torch.Tensor, noisy: torch.Tensor) -> dict:
    """Weights, optimiser moments and pending PESQ batch after one plain step: where both runs start."""
    task = new_task(params, 1)
    torch.manual_seed(1)
    task.step(clean, noisy)
    return copy.deepcopy({"model": task.model.state_dict(), "task": task.state_dict()})


def step_from(params: dict, state: dict, k: int, clean: torch.Tensor, noisy: torch.Tensor):
    """One step of k micro-batches from ``state`` (pending batch re-cut into k): weights, grads, losses."""
    task = new_task(params, k)
    task.model.load_state_dict(state["model"])
    task_state = copy.deepcopy(state["task"])
    if task_state.get("pending"):
        (p,) = task_state["pending"]
        task_state["pending"] = [{key: p[key][part] for key in p} for part in micro_slices(BATCH, k)]
    task.load_state_dict(task_state)
    torch.manual_seed(2)  # the diffusion noise: drawn for the whole step before it is cut
    losses = task.step(clean, noisy)
    named = [(f"{i}.{n}", p) for i, net in enumerate(task.modules()) for n, p in net.named_parameters()]
    return ({n: p.detach().clone() for n, p in named},
            {n: p.grad.detach().clone() for n, p in named if p.grad is not None}, losses)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def live(grads: dict[str, torch.Tensor]) -> list[str]:
    """Tensors whose gradient is not zero in exact arithmetic. A conv bias right before an InstanceNorm or
    GroupNorm is removed by the norm: its gradient is rounding noise, and so is Adam's update of it."""
    nets = {n.split(".")[0] for n in grads}
    total = {net: torch.cat([g.flatten() for n, g in grads.items() if n.split(".")[0] == net]).norm()
             for net in nets}
    return [n for n, g in grads.items() if g.norm() > 1e-11 * total[n.split(".")[0]]]


CASES = {"metric_gan": (lambda: gan_params(), 2), "predictive": (lambda: gan_params("predictive"), 4),
         "score_matching": (diffusion_params, 2)}


@pytest.mark.parametrize("objective", list(CASES))
def test_micro_batches_give_the_one_batch_step(objective, float64):
    """From the same state (for the GAN: with pending fake pairs, so the discriminator's fake term is in it),
    one step of k micro-batches against one batch of k x the size: gradients, weights and losses agree."""
    make, k = CASES[objective]
    params = make()
    (c0, n0), (c1, n1) = batches(2)
    state = warm_state(params, c0, n0)
    w_acc, g_acc, l_acc = step_from(params, state, k, c1, n1)
    w_one, g_one, l_one = step_from(params, state, 1, c1, n1)
    assert w_acc.keys() == w_one.keys() and g_acc.keys() == g_one.keys()
    names = live(g_one)
    assert len(names) > 0.5 * len(g_one)
    # the gradients themselves: Adam's step hardly depends on the gradient's scale, so a missing 1/k would
    # pass a check of the weights alone
    worst_grad = max(rel_diff(g_acc[n], g_one[n]) for n in names)
    worst_weight = max(rel_diff(w_acc[n], w_one[n]) for n in names)
    assert worst_grad < 1e-9, worst_grad  # measured: ~1e-14
    assert worst_weight < 1e-9, worst_weight
    assert l_acc.keys() == l_one.keys()
    task = task_class(objective)
    assert set(task.totals) <= set(l_one), (task.totals, l_one)  # the progress bar's and figures' totals exist
    if objective != "metric_gan":  # g_* / d_* name a GAN's generator and discriminator only
        assert all(name.startswith("loss_") for name in l_one), l_one
    for name in l_one:
        assert l_acc[name] == pytest.approx(l_one[name], rel=1e-9, abs=1e-12), name


def test_with_batchnorm_the_step_is_only_approximate(float64):
    """The conformer's BatchNorm normalises each micro-batch by its own statistics: the gradient differs
    (what docs/presets.md and the params comment warn of), and the test above would see it."""
    params = gan_params("predictive", num_tsblocks=1)
    (c0, n0), (c1, n1) = batches(2)
    state = warm_state(params, c0, n0)
    _, g_acc, _ = step_from(params, state, 2, c1, n1)
    _, g_one, _ = step_from(params, state, 1, c1, n1)
    worst = max(rel_diff(g_acc[n], g_one[n]) for n in live(g_one))
    assert worst > 1e-3, worst


def test_optimizer_setting_and_bad_values():
    params = tiny_params()
    net = torch.nn.Linear(2, 2)
    train = parse_section(TrainConfig, params["train"])
    assert type(make_optimizer(net.parameters(), train, 1e-3)) is torch.optim.AdamW
    adam = parse_section(TrainConfig, {**params["train"], "optimizer": "adam", "betas": [0.95, 0.999]})
    opt = make_optimizer(net.parameters(), adam, 5e-4)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["betas"] == (0.95, 0.999)
    with pytest.raises(ConfigError, match=r"^params.yaml train.optimizer: 'sgd' is not valid \(one of adamw"):
        parse_section(TrainConfig, {**params["train"], "optimizer": "sgd"})
    for bad in (0, 1.5, True, None):
        with pytest.raises(ConfigError, match="train.grad_accum_steps"):
            parse_section(TrainConfig, {**params["train"], "grad_accum_steps": bad})
    assert [(s.start, s.stop) for s in micro_slices(6, 3)] == [(0, 2), (2, 4), (4, 6)]
    with pytest.raises(ValueError, match="does not split into train.grad_accum_steps = 4"):
        micro_slices(6, 4)
    # every network of a task gets it: SAF's and SGMSE+'s Adam, the discriminator's too
    p = tiny_params(train__optimizer="adam")
    for objective in ("metric_gan", "predictive"):
        model = build_model(p["model"], 16000)
        task = task_class(objective)(model, p, 1e-3, torch.device("cpu"), pesq=ItemPesq())
        opts = [task.opt_g, task.opt_d] if objective == "metric_gan" else [task.opt]
        assert all(type(o) is torch.optim.Adam for o in opts)


# --------------------------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("data") / "prepared")


def _train(params: dict, prepared: Path, out: Path, **kw) -> dict:
    return train_dense(params, prepared_dir=prepared, out_dir=out / "m", metrics_path=out / "train.json",
                       plots_dir=out / "p", resume_dir=out / "ck", track=False, **kw)


def test_trainer_counts_optimiser_steps_and_matches_the_large_batch(prepared, tmp_path):
    """8 utterances, batch 2 x 2 micro-batches: 2 optimiser steps per epoch, the same items (and crops) per
    step as batch 4, hence the same losses at every step (float32 here: to rounding)."""
    base = gan_params("predictive")
    base["train"].update(epochs=1, val_every_steps=100)  # validated at the end only
    acc = copy.deepcopy(base)
    acc["train"].update(batch_size=2, grad_accum_steps=2)
    one = copy.deepcopy(base)
    one["train"].update(batch_size=4, grad_accum_steps=1)
    m_acc = _train(acc, prepared, tmp_path / "acc")
    m_one = _train(one, prepared, tmp_path / "one")
    assert m_acc["steps"] == m_one["steps"] == 2
    rows_acc, rows_one = (list(csv.DictReader(open(tmp_path / run / "p" / "losses.csv")))
                          for run in ("acc", "one"))
    assert [r["step"] for r in rows_acc] == [r["step"] for r in rows_one] == ["0", "1"]
    for r_acc, r_one in zip(rows_acc, rows_one):
        for key in r_one:
            assert float(r_acc[key]) == pytest.approx(float(r_one[key]), rel=1e-5), key
    too_many = copy.deepcopy(acc)
    too_many["train"]["grad_accum_steps"] = 5
    with pytest.raises(Exception, match="lower train.batch_size or train.grad_accum_steps"):
        _train(too_many, prepared, tmp_path / "none")


def test_interrupted_accumulating_gan_run_resumes_exactly(prepared, tmp_path):
    """The discriminator's pending fake micro-batches are saved and restored: a straight run's weights."""
    params = gan_params()
    params["train"].update(batch_size=1, grad_accum_steps=2, epochs=2)
    straight = _train(params, prepared, tmp_path / "straight")
    part = _train(params, prepared, tmp_path / "resumed", stop_after_steps=3)
    assert part["interrupted"]
    resumed = _train(params, prepared, tmp_path / "resumed")
    assert resumed["steps"] == straight["steps"] == 8
    g1, _ = load_checkpoint(tmp_path / "straight" / "m" / "model.pt")
    g2, _ = load_checkpoint(tmp_path / "resumed" / "m" / "model.pt")
    for (name, a), b in zip(g1.state_dict().items(), g2.state_dict().values()):
        assert torch.equal(a, b), name


def test_torchrun_with_accumulation_keeps_replicas_identical(prepared, tmp_path):
    """DDP skips the all-reduce of all but the last micro-batch (no_sync) and still syncs once per step."""
    script = tmp_path / "ddp_accum.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from helpers import tiny_params
        from effifusion.training.stages import train_dense
        p = tiny_params(train__batch_size=1, train__grad_accum_steps=2, train__epochs=1)
        train_dense(p, prepared_dir=Path({str(prepared)!r}), out_dir=Path({str(tmp_path / 'm')!r}),
                    metrics_path=Path({str(tmp_path / 'train.json')!r}),
                    plots_dir=Path({str(tmp_path / 'p')!r}), resume_dir=Path({str(tmp_path / 'ck')!r}),
                    track=False)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29563", str(script)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["ddp_world_size"] == 2 and metrics["ddp_max_param_diff"] == 0.0
    assert metrics["steps"] == 8 // (1 * 2 * 2)  # 8 utterances, 1 x 2 micro-batches x 2 processes per step
