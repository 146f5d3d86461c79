"""Two-node training: `torchrun --nnodes 2 --nproc-per-node 1` with the c10d rendezvous and gloo, as two
separate torchrun processes ("nodes") on localhost, each in its own folder as if on its own machine.

The model is BatchNorm-free (EffiFusion-GAN without its conformers, predictive objective), so the two
nodes' run must also equal one process taking the doubled batch: DDP averages the two ranks' gradients
over the same items (EpochSampler: rank r takes every 2nd item of the epoch's order) with the same crops
(they depend on the item, not on the process). Both run in float64: in float32 the two ways of summing
differ by rounding, which Adam's first steps turn into output differences growing about 10x per step
(3.5e-5 after one step, 8e-3 after four, measured; DDP with 2 x 1 items is bit for bit gradient
accumulation of 2 x 1); in float64 they agree to ~1e-15."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from effifusion.models.registry import load_checkpoint
from effifusion.training.stages import train_dense
from helpers import ROOT, synthetic_speech, tiny_params

# Imported first by every process of a node (PYTHONPATH): the ranks note their rank (outside the node's
# folder) and train in float64 (see above); the torchrun launcher (no RANK) is left alone.
SITECUSTOMIZE = """
import os, sys
from pathlib import Path
if "RANK" in os.environ:
    (Path(__file__).parent / f"rank_of_{Path.cwd().name}").write_text(os.environ["RANK"])
    sys.path[:0] = [TESTS, TESTS + "/training"]
    from test_multinode import float64_training
    float64_training()
"""


def train_command() -> list[str]:
    """dvc.yaml's train stage command without its `python`: the script and its paths (relative)."""
    cmd = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["cmd"])
    assert cmd[0] == "python" and cmd[1] == "stages/train.py", cmd
    return [str(ROOT / cmd[1]), *cmd[2:]]


class _Float64Batches:
    """A loader whose (clean, noisy) batches come as float64."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return ((clean.double(), noisy.double()) for clean, noisy in self.loader)


def float64_training(setattr=setattr) -> None:
    """Models in float64 and the trainer's batches and validation items converted to it (the data stay
    float32 on disk and in the datasets). ``setattr``: pytest's monkeypatch.setattr to undo it."""
    from effifusion.training import trainer

    torch.set_default_dtype(torch.float64)
    make_loader, validation_items = trainer.make_loader, trainer.validation_items
    setattr(trainer, "make_loader", lambda *a, **k: _Float64Batches(make_loader(*a, **k)))
    setattr(trainer, "validation_items",
            lambda *a, **k: [(utt, c.double(), n.double()) for utt, c, n in validation_items(*a, **k)])


def batchnorm_free_params(batch_size: int) -> dict:
    """tiny_params without the conformers (the model's only BatchNorm), predictive objective: 2 epochs."""
    params = tiny_params(train__objective="predictive", train__batch_size=batch_size)
    params["model"].update(channels=4, num_tsblocks=0)
    params["train"]["val_every_steps"] = 100  # validated at the end only
    return params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_node(node: Path, prepared: Path, params: dict, site: Path, port: int) -> subprocess.Popen:
    """One "node": a folder with params.yaml and data/prepared (a link to the corpus), running the command
    of README's multi-node example there, on localhost. Its outputs, checkpoints and MLflow store (the
    default: ./mlflow.db, ./mlartifacts) land in the folder, as on a machine of its own."""
    (node / "data").mkdir(parents=True)
    (node / "data" / "prepared").symlink_to(prepared, target_is_directory=True)
    (node / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "effifusion-test",
           *train_command()]
    return subprocess.Popen(cmd, cwd=node, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def written(node: Path) -> list[str]:
    """The files a run wrote in a node's folder (its inputs, params.yaml and data/, left out)."""
    return sorted(os.path.relpath(os.path.join(d, f), node) for d, _, files in os.walk(node) for f in files
                  if f != "params.yaml")


@pytest.fixture
def float64(monkeypatch):
    previous = torch.get_default_dtype()
    yield lambda: float64_training(monkeypatch.setattr)
    torch.set_default_dtype(previous)


def test_two_nodes_train_as_one_process_with_the_doubled_batch(tiny_corpus, tmp_path, float64):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.replace("TESTS", repr(str(ROOT / "tests"))))
    port = free_port()
    t0 = time.perf_counter()
    nodes = [torchrun_node(tmp_path / f"node{i}", tiny_corpus, batchnorm_free_params(batch_size=1), site, port)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    elapsed = time.perf_counter() - t0
    for p, log in zip(nodes, logs):
        assert p.returncode == 0, log[-3000:]

    # the rendezvous gave each node one rank of a world of two; rank 0 alone wrote outputs, checkpoints
    # and MLflow (the other makes its empty output folders, nothing more)
    rank = {i: int((site / f"rank_of_node{i}").read_text()) for i in range(2)}
    assert sorted(rank.values()) == [0, 1]
    main, other = (tmp_path / f"node{i}" for i in sorted(rank, key=rank.get))
    assert written(other) == []
    assert {"models/dense/model.pt", "metrics/train.json", "plots/train/losses.csv", "mlflow.db",
            "checkpoints/train.pt"} <= set(written(main)), written(main)
    metrics = json.loads((main / "metrics" / "train.json").read_text())
    assert metrics["ddp_world_size"] == 2
    assert metrics["ddp_max_param_diff"] == 0.0  # all ranks' weights against rank 0's, all-reduced
    assert metrics["steps"] == 2 * (8 // 2)  # 2 epochs of 8 items, 1 per rank per step
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{main / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.batch_size"] == "1"

    # one process, batch 2: the same weights and the same enhanced audio. The checkpoints hold float32
    # (rounding: 6e-8 relative per weight); measured 4e-7 at worst (a conv bias that a norm follows: its
    # gradient is rounding noise) and 2e-7 on the output; trained in float32, 0.25 and 0.37
    one = tmp_path / "one"
    float64()
    single = train_dense(batchnorm_free_params(batch_size=2), prepared_dir=tiny_corpus, out_dir=one / "model",
                         metrics_path=one / "train.json", plots_dir=one / "plots", resume_dir=one / "ckpt",
                         track=False)
    assert single["steps"] == metrics["steps"]
    g_ddp, _ = load_checkpoint(main / "models" / "dense" / "model.pt")
    g_one, _ = load_checkpoint(one / "model" / "model.pt")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g_one.modules())
    worst = max(float((a - b).norm() / b.norm().clamp_min(1e-30))
                for a, b in zip(g_ddp.state_dict().values(), g_one.state_dict().values()) if b.is_floating_point())
    x = torch.stack([torch.from_numpy(synthetic_speech(1.0, seed)).double() for seed in (11, 12)])
    with torch.no_grad():
        y_ddp, y_one = g_ddp.eval().enhance_normalised(x), g_one.eval().enhance_normalised(x)
    out = float((y_ddp - y_one).norm() / y_one.norm())
    print(f"two nodes: {elapsed:.1f} s; relative difference to one process: weights {worst:.1e}, output {out:.1e}")
    assert worst < 1e-5 and out < 1e-5, (worst, out)
