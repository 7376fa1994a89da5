"""The diffusion trainer: exact resume, DDP equivalence, EMA, checkpoints, sample grids, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgen.train import EMA, DiffusionTrainer, StepBatches
from fastgen.train import checkpoint as ckpt
from train_fixtures import small_dataset, small_trainer, trainer_tensors

HERE = Path(__file__).resolve().parent


def _optimizer_state(tr):
    return {f"{i}/{k}": v for i, st in tr.optimizer.state_dict()["state"].items() for k, v in st.items()}


def _assert_same(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs (max {(a[k].double() - b[k].double()).abs().max():.3e})"


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_metadata(tmp_path):
    t = {"a/x": torch.randn(3, 4), "b": torch.arange(5), "s": torch.tensor(2.5), "h": torch.randn(2).half()}
    p = ckpt.save_checkpoint(tmp_path / "c.safetensors", t, {"step": 7, "cfg": {"lr": 1e-3}})
    got, meta = ckpt.load_checkpoint(p)
    _assert_same(got, t, "tensors")
    assert meta["step"] == 7 and meta["cfg"] == {"lr": 1e-3} and meta["format_version"] == ckpt.FORMAT_VERSION
    assert [f.name for f in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left behind


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch as st

    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, {"w": torch.ones(4)}, {"step": 1})
    before = path.read_bytes()

    def failing(tensors, filename, metadata=None):  # a crash / full disk halfway through the write
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(st, "save_file", failing)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(path, {"w": torch.zeros(4)}, {"step": 2})
    assert path.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c.safetensors"]


def test_load_checkpoint_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ckpt.load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    with pytest.raises(ValueError, match="junk.safetensors"):
        ckpt.load_checkpoint(junk)
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.ones(2)}, pickled)  # a pickle is never loaded
    with pytest.raises(ValueError, match="pickled.safetensors"):
        ckpt.load_checkpoint(pickled)
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a fastgen checkpoint"):
        ckpt.load_checkpoint(foreign)
    truncated = tmp_path / "trunc.safetensors"
    good = ckpt.save_checkpoint(tmp_path / "good.safetensors", {"w": torch.randn(1000)}, {})
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="trunc.safetensors"):
        ckpt.load_checkpoint(truncated)


def test_optimizer_state_roundtrip():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    tensors, meta = ckpt.optimizer_to_tensors(opt)
    json.dumps(meta)  # the metadata is JSON
    net2 = torch.nn.Linear(4, 3)
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW(net2.parameters(), lr=5.0)
    ckpt.optimizer_from_tensors(opt2, tensors, meta)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 1e-2
    x = torch.randn(5, 4)
    for o, n in ((opt, net), (opt2, net2)):
        o.zero_grad()
        n(x).square().sum().backward()
        o.step()
    _assert_same(dict(net.state_dict()), dict(net2.state_dict()), "params after one more step")


def test_list_and_prune_checkpoints(tmp_path):
    for s in (3, 10, 7):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, s), {"w": torch.ones(1)}, {})
    (tmp_path / "notes.txt").write_text("x")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 7, 10]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000010.safetensors"
    ckpt.prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [7, 10]
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None


# ----------------------------------------------------------------------------- EMA
def test_ema_update_matches_formula():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(net, decay=0.9, warmup=True)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for n in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(8, 3))  # moves the BatchNorm running stats (buffers are copied)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in net.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() or "running" in k else d * expected[k] + (1 - d) * v
        ema.update(net)
    got = ema.averaged_state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)
    assert int(ema.num_updates) == 4
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_ema_update_every_and_state_roundtrip():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.5, warmup=False, update_every=2)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # skipped (1st call)
    assert not torch.equal(ema.module.weight, net.weight)
    ema.update(net)
    w1 = ema.module.weight.clone()
    ema2 = EMA(torch.nn.Linear(2, 2), decay=0.5, warmup=False, update_every=2)
    ema2.load_state_dict(ema.state_dict())
    for e in (ema, ema2):
        e.update(net)
        e.update(net)
    assert torch.equal(ema.module.weight, ema2.module.weight) and not torch.equal(w1, ema.module.weight)
    target = torch.nn.Linear(2, 2)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.module.weight)


def test_ema_bad_arguments():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)
    with pytest.raises(ValueError, match="update_every"):
        EMA(net, update_every=0)
    with pytest.raises(TypeError, match="model"):
        EMA("net")


# ----------------------------------------------------------------------------- data order
def test_step_batches_epochs_ranks_and_resume():
    full = StepBatches(10, 4, seed=1)
    seen = sum((full.global_batch(s) for s in range(5)), [])  # 20 indices = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # a new permutation per epoch
    r0 = iter(StepBatches(10, 4, seed=1, start_step=3, rank=0, world=2))
    r1 = iter(StepBatches(10, 4, seed=1, start_step=3, rank=1, world=2))
    for s in (3, 4):
        assert next(r0) + next(r1) == full.global_batch(s)


# ----------------------------------------------------------------------------- the trainer
def test_training_lowers_the_loss():
    tr = small_trainer(ema_decay=None, warmup_steps=0, lr=2e-3, batch_size=16)
    first = sum(float(tr.step()) for _ in range(5)) / 5
    for _ in range(30):
        tr.step()
    last = sum(float(tr.step()) for _ in range(5)) / 5
    assert last < 0.8 * first, (first, last)


def test_resume_is_bit_identical(tmp_path):
    """save -> load into a fresh trainer (different init) -> continue == an uninterrupted run, with
    dropout (global RNG), label dropout, warm-up, clipping and EMA all in play."""
    a = small_trainer(dropout=0.2)
    a.train(6)

    b = small_trainer(dropout=0.2)
    b.train(3)
    path = b.save_checkpoint(tmp_path / "mid.safetensors")
    torch.manual_seed(123)  # the global RNG moves on before the resume
    c = small_trainer(dropout=0.2, model_seed=99)
    assert c.load_checkpoint(path) == 3
    c.train(3)
    assert c.step_count == 6
    _assert_same(trainer_tensors(a), trainer_tensors(c), "model/grads/EMA")
    _assert_same(_optimizer_state(a), _optimizer_state(c), "optimizer state")
    assert a.generator.get_state().equal(c.generator.get_state())


def test_train_writes_checkpoints_samples_and_metrics(tmp_path):
    tr = small_trainer(out_dir=tmp_path, log_every=2, sample_every=4, checkpoint_every=2, keep_checkpoints=2,
                       sample_count=6, sample_steps=3, progress=True)
    summary = tr.train(5)
    assert summary["steps"] == 5 and summary["it_per_s"] > 0
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000004.safetensors", "step_00000005.safetensors"]  # pruned to 2 + the final one
    from PIL import Image
    with Image.open(tmp_path / "samples" / "step_00000004.png") as im:
        im.verify()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 5]
    assert all(r["loss"] > 0 and r["it_per_s"] > 0 and "grad_norm" in r for r in recs)
    # resuming from the folder picks the newest checkpoint
    tr2 = small_trainer(out_dir=tmp_path)
    assert tr2.load_checkpoint(tmp_path) == 5


def test_sampling_does_not_disturb_training(tmp_path):
    a = small_trainer()
    a.train(4)
    b = small_trainer(out_dir=tmp_path, sample_every=2, sample_steps=2, sample_count=4)
    b.train(4)
    _assert_same(trainer_tensors(a), trainer_tensors(b), "with vs without sample grids")


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedules(schedule):
    tr = small_trainer(lr=1.0, warmup_steps=4, lr_schedule=schedule, decay_steps=None if schedule == "constant" else 12)
    lrs = [tr._lr_at(s) for s in range(16)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    if schedule == "constant":
        assert lrs[4:] == [1.0] * 12
    else:
        assert lrs[4] == 1.0 and lrs[12:] == [0.0] * 4 and all(a > b for a, b in zip(lrs[4:12], lrs[5:13]))
        assert lrs[8] == pytest.approx(0.5)  # half way through the decay: both schedules at 0.5
    tr.train(2)
    assert tr.optimizer.param_groups[0]["lr"] == lrs[1]


def test_dataloader_workers_give_the_same_batches():
    a, b = small_trainer(), small_trainer(num_workers=1)
    for _ in range(2):
        a.step(), b.step()
    _assert_same(trainer_tensors(a), trainer_tensors(b), "num_workers=0 vs 1")


def test_bf16_autocast_step():
    fp32, bf16 = small_trainer(), small_trainer(bf16=True)
    l32, l16 = float(fp32.step()), float(bf16.step())
    assert abs(l16 - l32) < 0.05 * l32
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in bf16.model.parameters() if p.grad is not None)


def test_nonfinite_loss_is_reported_and_not_checkpointed(tmp_path):
    tr = small_trainer(out_dir=tmp_path, checkpoint_every=1)
    tr.train(1)
    with torch.no_grad():
        tr.model.out_conv.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="step 2"):
        tr.train(2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [1]


def test_ctrl_c_writes_a_checkpoint(tmp_path, monkeypatch):
    tr = small_trainer(out_dir=tmp_path)
    real_step, calls = tr.step, []

    def step():
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(tr, "step", step)
    with pytest.raises(KeyboardInterrupt):
        tr.train(10)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2]


def test_sample_uses_ema_weights_and_labels():
    tr = small_trainer(ema_decay=0.5)
    tr.train(2)
    x = tr.sample(4, steps=2)
    assert x.shape == (4, 3, 8, 8) and torch.isfinite(x).all()
    assert tr.sampling_model() is tr.ema.module


def test_load_diffusion_rebuilds_the_sampling_model(tmp_path):
    from fastgen.train import load_diffusion
    tr = small_trainer(ema_decay=0.5)
    tr.train(3)
    path = tr.save_checkpoint(tmp_path / "c.safetensors")
    for ema in (True, False):
        d = load_diffusion(path, ema=ema)
        src = tr.ema.module if ema else tr.model
        _assert_same(dict(d.model.state_dict()), dict(src.state_dict()), f"weights (ema={ema})")
        assert torch.equal(d.schedule.betas, tr.diffusion.schedule.betas) and d.num_classes == 4
        assert not d.model.training
    labels = torch.tensor([0, 1, 2, 3])
    want = tr.sample(4, class_labels=labels, steps=3, seed=5)
    got = load_diffusion(path).sample((4, 3, 8, 8), steps=3, class_labels=labels,
                                      generator=torch.Generator().manual_seed(5), progress=False,
                                      guidance_scale=tr.config["guidance_scale"], sampler_kwargs={"clip_sample": True})
    assert torch.equal(got, want)


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=0), "batch_size"), (dict(lr=-1.0), "lr"), (dict(grad_clip=-1.0), "grad_clip"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(betas=(0.9,)), "betas"), (dict(keep_checkpoints=0), "keep_checkpoints"),
    (dict(sample_every=1.5), "sample_every"), (dict(bf16="yes"), "bf16"), (dict(seed=-1), "seed"),
    (dict(lr_schedule="step"), "lr_schedule"), (dict(lr_schedule="cosine"), "decay_steps"),
    (dict(lr_schedule="linear", decay_steps=1), "decay_steps"),
])
def test_bad_settings_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        small_trainer(**kw)


def test_bad_dataset_and_checkpoint_inputs(tmp_path):
    from fastgen.diffusion import GaussianDiffusion
    tr = small_trainer()
    unlabeled = torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="labels"):
        DiffusionTrainer(tr.diffusion, unlabeled)
    with pytest.raises(TypeError, match="diffusion"):
        DiffusionTrainer(tr.model, small_dataset())
    with pytest.raises(ValueError, match="empty"):
        DiffusionTrainer(GaussianDiffusion(tr.model), torch.utils.data.TensorDataset(torch.zeros(0, 3, 8, 8)))
    with pytest.raises(FileNotFoundError, match="no step_"):
        tr.load_checkpoint(tmp_path)
    other = small_trainer()
    other.model.out_conv = torch.nn.Conv2d(16, 3, 1)  # a different architecture
    path = tr.save_checkpoint(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="does not fit this model"):
        other.load_checkpoint(path)


# ----------------------------------------------------------------------------- DDP
def test_ddp_two_process_gloo_step_equals_single_process(tmp_path):
    """torchrun with 2 gloo processes, global batch 8 (4 each) == one process with batch 8."""
    steps = 2
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "train_fixtures.py"), str(tmp_path), str(steps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from safetensors.torch import load_file
    got = load_file(str(tmp_path / "ddp.safetensors"))
    ddp_losses = json.loads((tmp_path / "ddp_losses.json").read_text())

    tr = small_trainer()
    losses = [float(tr.step()) for _ in range(steps)]
    ref = trainer_tensors(tr)
    assert ref.keys() == got.keys()
    # the global loss is the mean of the two halves' means: equal up to rounding
    assert ddp_losses == pytest.approx(losses, rel=1e-6)
    for k in ref:  # gradients are all-reduced (sum order differs); Adam amplifies that only slightly
        tol = 1e-6 if k.startswith("grad/") else 5e-6
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=tol, msg=k)
