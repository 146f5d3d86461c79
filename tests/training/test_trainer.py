"""GAN training loop: learning, exact resume, DDP on CPU, MLflow logging (tiny configs, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from effifusion.models.discriminator import build_discriminator
from effifusion.models.registry import build_model, load_checkpoint
from effifusion.tracking import runs as tracking
from effifusion.training.pesq_pool import PesqPool
from effifusion.training.stages import prune_finetune, train_dense
from effifusion.training.tasks.metric_gan import GanStep
from helpers import ROOT, tiny_params, write_manifest, write_pair


@pytest.fixture(scope="module")
def prepared(tiny_corpus) -> Path:
    return tiny_corpus  # make_prepared(), built once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def straight(prepared, tmp_path_factory) -> dict:
    """The uninterrupted reference run of ``tiny_params()`` (2 epochs, 8 steps), trained once for the tests
    that compare a resumed or continued run with it: {"out" (models_train/, ckpt/ ...), "metrics"}."""
    out = tmp_path_factory.mktemp("straight")
    return {"out": out, "metrics": _run(tiny_params(), "train", prepared, out)}


def _dense_into(tiny_dense: dict, out: Path) -> None:
    """The session's 1-epoch dense model (conftest.py) as out/models_train, where _run's prune starts."""
    shutil.copytree(tiny_dense["model_dir"], out / "models_train")


def _run(params, stage, prepared, out, **kw):
    paths = dict(prepared_dir=prepared, out_dir=out / f"models_{stage}", metrics_path=out / f"{stage}.json",
                 plots_dir=out / f"plots_{stage}", resume_dir=out / "ckpt", track=False, **kw)
    if stage == "prune":
        return prune_finetune(params, init_dir=out / "models_train", **paths)
    return train_dense(params, **paths)


def test_tiny_model_overfits_one_batch(prepared):
    torch.manual_seed(0)
    params = tiny_params()
    params["train"]["loss_weights"]["metric"] = 0.0  # the discriminator's target moves; leave it out
    g = build_model(params["model"], 16000)
    d = build_discriminator(params["discriminator"])
    opt_g = torch.optim.AdamW(g.parameters(), lr=3e-3)
    opt_d = torch.optim.AdamW(d.parameters(), lr=1e-3)
    from effifusion.data.datasets import PairDataset

    ds = PairDataset(prepared / "train.csv", segment_samples=8000, seed=0)
    clean = torch.stack([ds[i][0] for i in range(2)])
    noisy = torch.stack([ds[i][1] for i in range(2)])
    with PesqPool(0) as pool:
        step = GanStep(g, d, opt_g, opt_d, g.frontend, dict(params["train"]["loss_weights"]), pool)
        first = step(clean, noisy)
        for _ in range(40):
            last = step(clean, noisy)
    # measured: magnitude 2.9 -> 2.3, total 4.7 -> 3.6 after 40 steps; an untrained loop stays flat
    assert last["g_magnitude"] < 0.85 * first["g_magnitude"]
    assert last["g_total"] < 0.85 * first["g_total"]
    assert step.timings["g_s"] > 0 and step.timings["d_s"] > 0


@pytest.mark.parametrize("stage", ["train", "prune"])
def test_interrupted_run_resumes_to_the_same_weights(prepared, tmp_path, stage, request):
    params = tiny_params()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    if stage == "prune":  # both start from the same dense model
        for out in (straight, resumed):
            _dense_into(request.getfixturevalue("tiny_dense"), out)
        m_straight = _run(params, stage, prepared, straight)
    else:  # the module's uninterrupted run of these params
        ref = request.getfixturevalue("straight")
        straight, m_straight = ref["out"], ref["metrics"]
    part = _run(params, stage, prepared, resumed, stop_after_steps=3)
    assert part["interrupted"] and (resumed / "ckpt" / f"{stage}.pt").is_file()
    m_resumed = _run(params, stage, prepared, resumed)
    assert (resumed / "ckpt" / f"{stage}.pt").exists()  # kept: raising the epochs continues from it
    assert m_resumed["steps"] == m_straight["steps"]
    g1, _ = load_checkpoint(straight / f"models_{stage}" / "model.pt")
    g2, _ = load_checkpoint(resumed / f"models_{stage}" / "model.pt")
    for (k, a), b in zip(g1.state_dict().items(), g2.state_dict().values()):
        assert torch.equal(a, b), k
    assert m_resumed["g_total"] == pytest.approx(m_straight["g_total"], rel=1e-6)


def test_raising_epochs_continues_a_finished_run(prepared, tmp_path, capsys, straight, tiny_dense):
    """1 epoch, then 2: the second run trains only the new epoch and ends where a 2-epoch run ends.
    Changing a runtime (speed-only) setting in between does not discard the checkpoint."""
    straight = straight["metrics"]  # tiny_params(): 2 epochs
    shutil.copytree(tiny_dense["root"], tmp_path / "grown")  # a finished 1-epoch run: models_train/, ckpt/
    capsys.readouterr()
    params = tiny_params(train__epochs=2)
    params["runtime"].update(checkpoint_every_steps=3, log_every_steps=2)
    grown = _run(params, "train", prepared, tmp_path / "grown")
    assert "resuming from" in capsys.readouterr().out
    assert grown["steps"] == straight["steps"] == 8
    assert grown["g_total"] == pytest.approx(straight["g_total"], rel=1e-6)
    shorter = _run(tiny_params(train__epochs=1), "train", prepared, tmp_path / "grown")  # past its schedule:
    assert shorter["steps"] == 4  # the checkpoint at step 8 is ignored and the run starts over
    assert "beyond this schedule" in capsys.readouterr().out


def test_a_corrupt_checkpoint_is_set_aside_and_training_goes_on(prepared, tmp_path, capsys, straight):
    """A cut-short resume file falls back to the one before it; garbage with nothing behind it starts
    afresh. Both end with the weights of an uninterrupted run, and each says so in one line."""
    g_straight, _ = load_checkpoint(straight["out"] / "models_train" / "model.pt")
    straight = straight["metrics"]  # tiny_params()
    params = tiny_params()
    params["runtime"]["checkpoint_every_steps"] = 1
    for case in ("truncated", "garbage"):
        out = tmp_path / case
        _run(params, "train", prepared, out, stop_after_steps=3)
        ckpt = out / "ckpt" / "train.pt"
        assert (out / "ckpt" / "train.prev.pt").is_file()
        if case == "truncated":
            ckpt.write_bytes(ckpt.read_bytes()[:1000])
        else:
            ckpt.write_bytes(b"not a checkpoint at all")
            (out / "ckpt" / "train.prev.pt").unlink()
        capsys.readouterr()
        m = _run(params, "train", prepared, out)
        err = capsys.readouterr().err
        assert f"{ckpt} is unreadable" in err and "moved to train.pt.corrupt" in err, err
        assert "Traceback" not in err and (out / "ckpt" / "train.pt.corrupt").is_file()
        assert ("resuming from the previous checkpoint" in err) == (case == "truncated")
        assert m["steps"] == straight["steps"]
        g, _ = load_checkpoint(out / "models_train" / "model.pt")
        for (k, a), b in zip(g_straight.state_dict().items(), g.state_dict().values()):
            assert torch.equal(a, b), (case, k)


def test_a_rerun_writes_the_same_model_bytes(prepared, tmp_path, tiny_dense):
    """`dvc repro -f train` must leave the prune stage up to date: the output folder is a function of
    data, params and code only (no run id, no timing), and CPU training is deterministic. The first run:
    the session's tiny_dense (the same params and data, trained earlier in this process)."""
    _run(tiny_params(train__epochs=1), "train", prepared, tmp_path / "second")
    second_dir = tmp_path / "second" / "models_train"
    first, second = (sorted(d.iterdir()) for d in (tiny_dense["model_dir"], second_dir))
    assert [p.name for p in first] == ["discriminator.pt", "model.pt"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_resume_ignores_a_checkpoint_of_other_params(prepared, tmp_path):
    _run(tiny_params(), "train", prepared, tmp_path, stop_after_steps=2)
    m = _run(tiny_params(train__lr=1e-4), "train", prepared, tmp_path)
    assert m["steps"] == 8  # started over: 2 epochs x 4 steps


def test_prune_stage_hits_amount_and_saves_a_loadable_dense_state(prepared, tmp_path, tiny_dense):
    _dense_into(tiny_dense, tmp_path)  # tiny_params(train__epochs=1), trained once per session
    m = _run(tiny_params(prune__amount=0.4), "prune", prepared, tmp_path)
    assert m["conv_sparsity"] == pytest.approx(0.4, abs=1e-3)
    ckpt = torch.load(tmp_path / "models_prune" / "model.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in ckpt["weights"])
    g = build_model(ckpt["config"], ckpt["sample_rate"])
    g.load_state_dict(ckpt["weights"])  # strict: a fresh model takes it as is
    sparsity = json.loads((tmp_path / "models_prune" / "sparsity.json").read_text())
    assert sparsity["overall"] == pytest.approx(0.4, abs=1e-3)
    rows = (tmp_path / "plots_prune" / "sparsity.csv").read_text().splitlines()
    assert rows[0] == "step,sparsity,target" and float(rows[-1].split(",")[1]) == pytest.approx(0.4, abs=1e-3)


def test_torchrun_two_processes_keep_replicas_identical(prepared, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from helpers import tiny_params
        from effifusion.training.stages import train_dense
        p = tiny_params(train__batch_size=1)
        m = train_dense(p, prepared_dir=Path({str(prepared)!r}), out_dir=Path({str(tmp_path / 'm')!r}),
                        metrics_path=Path({str(tmp_path / 'train.json')!r}), plots_dir=Path({str(tmp_path / 'p')!r}),
                        resume_dir=Path({str(tmp_path / 'ck')!r}), track=False)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29561", str(script)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["ddp_world_size"] == 2
    assert metrics["ddp_max_param_diff"] == 0.0
    assert metrics["steps"] == 2 * (8 // 2)  # each rank takes half of the 8 utterances per epoch


def test_training_run_is_logged_to_mlflow(prepared, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_EXP_NAME", "sunny-sweep")
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    train_dense(params, prepared_dir=prepared, out_dir=tmp_path / "dense",
                metrics_path=tmp_path / "train.json", plots_dir=tmp_path / "plots", resume_dir=tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "dense").iterdir()) == ["discriminator.pt", "model.pt"]
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = tracking.find_model_run(tmp_path / "dense" / "model.pt", params["mlflow"]["experiment"])
    run = client.get_run(run.info.run_id)  # the output holds no run id: the run is found by the model's md5
    assert run.data.params["prune.amount"] == "0.3"
    assert run.data.params["model.channels"] == "8"
    assert run.data.tags["stage"] == "train"
    assert run.data.tags["dvc_exp"] == "sunny-sweep"
    assert len(run.data.tags["params_hash"]) == 12
    assert run.info.run_name.startswith("train-C8x1")
    assert {"val/pesq", "val/best_step", "train/g_total", "train/d_loss", "train/lr", "train/sparsity",
            "train/params_nonzero", "train/steps_per_s"} <= set(run.data.metrics)
    assert not [k for k in run.data.metrics if "/" not in k]  # every metric in a section
    history = client.get_metric_history(run.info.run_id, "train/g_total")
    assert len(history) >= 4  # a curve, not a single point
    val_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/pesq"))
    assert val_steps == [3, 6, 8, 8]  # every 3 steps and at the end of 8, then the selected weights' value
    contexts = {t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert contexts == {"training", "validation"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "figures", "val_examples"} <= artifacts
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert any(p.endswith("train_losses.png") for p in figures)
    examples = [a.path for a in client.list_artifacts(run.info.run_id, "val_examples")]
    assert any(p.endswith("_enhanced.wav") for p in examples) and any(p.endswith(".png") for p in examples)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("stage", ["train", "prune"])
def test_gpu_training_with_bf16_and_compile(prepared, tmp_path, stage):
    params = tiny_params(train__device="cuda", train__amp="bf16", train__compile=True, train__pesq_workers=2)
    if stage == "prune":
        _run(tiny_params(train__epochs=1, train__device="cuda"), "train", prepared, tmp_path)
    m = _run(params, stage, prepared, tmp_path)
    assert m["steps"] > 0 and m["g_total"] == m["g_total"]  # finite
    if stage == "prune":
        assert m["conv_sparsity"] == pytest.approx(0.3, abs=1e-3)


def _demo_prepared(root: Path, n_train: int, n_val: int, snr_db: float) -> Path:
    """A tiny data/prepared of the demo corpus's synthetic speakers and noises, mixed at 16 kHz."""
    import numpy as np

    from effifusion.data.demo_corpus import make_noise, make_speaker, make_talkers, make_utterance
    from effifusion.data.mixing import mix_at_snr

    sr, rng = 16000, np.random.default_rng(0)
    talkers = make_talkers(sr, rng, count=2)
    for split, n, speakers, noises in (("train", n_train, ["p001", "p002"], ["car", "ssn", "kitchen"]),
                                       ("val", n_val, ["p003", "p004"], ["car", "ssn", "kitchen"])):
        rows = []
        for i in range(n):
            spk_name = speakers[i % 2]
            spk = make_speaker(np.random.default_rng(int(spk_name[1:])))
            utt = f"{spk_name}_{split}{i:03d}"
            clean = make_utterance(int(1.6 * sr), sr, spk, rng)
            noise = make_noise(noises[i % 3], len(clean), sr, rng, talkers)
            noisy, _ = mix_at_snr(clean, noise, snr_db, sr)
            peak = max(1.0, np.abs(noisy).max() / 0.9)
            rows.append(write_pair(root, split, utt, clean / peak, noisy / peak, noises[i % 3], snr_db))
        write_manifest(root / f"{split}.csv", rows)
    return root


@pytest.mark.slow  # a minute of training: `make test` runs it, `make test-fast` does not
def test_short_training_run_enhances_held_out_speech(tmp_path):
    """The real train stage with the demo recipe at tiny size: validation PESQ (held-out speakers,
    whole utterances) ends above the noisy input's, not just a falling loss on one batch."""
    import numpy as np

    from effifusion.data.datasets import validation_items
    from effifusion.metrics.quality import pesq_wb

    prepared = _demo_prepared(tmp_path / "prepared", n_train=16, n_val=4, snr_db=5.0)
    params = tiny_params(train__epochs=7, train__val_every_steps=28, train__segment_s=0.5, model__channels=16)
    items = validation_items(prepared / "val.csv", params["train"]["val_utterances"], seed=0)
    noisy = np.mean([pesq_wb(c.numpy(), n.numpy()) for _, c, n in items])
    m = _run(params, "train", prepared, tmp_path)
    # measured: noisy 1.34 -> model 1.97 after 64 steps of 1 s crops; 0.5 s crops (half the time a step):
    # 1.63-1.70 after 48 steps, 1.83 after 56 (these 7 epochs), 1.89 after 64 (about 100 s on 2 cores)
    assert m["val_pesq"] > noisy + 0.1, (m["val_pesq"], noisy)
