"""GANTrainer: the loop, logging, sample grids, checkpoints with exact resume, load_generator, and
torchrun data parallelism (2 gloo processes == 1 process)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgen.gan import StyleGANTraining
from fastgen.models import Discriminator, Generator
from fastgen.train import DiffusionTrainer, GANTrainer, load_generator
from gan_fixtures import CFG, gan_grads, gan_tensors, small_dataset, small_gan_trainer

HERE = Path(__file__).resolve().parent


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_logs_samples_checkpoints_and_loads_the_generator(tmp_path):
    tr = small_gan_trainer(out_dir=tmp_path, log_every=2, sample_every=3, checkpoint_every=3, ddp_safe=False)
    summary = tr.train(6)
    assert summary["steps"] == 6 and {"g", "d", "d_real", "d_fake"} <= summary.keys()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6] and all(r["d"] == r["d"] for r in recs)
    assert "r1" in recs[0] and "pl" in recs[0]  # lazy regularisers averaged over the steps they ran
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_00000003.png", "step_00000006.png"]
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step_00000003.safetensors",
                                                                             "step_00000006.safetensors"]
    G = load_generator(tmp_path)
    assert not G.training
    z, c = torch.randn(3, 16), torch.tensor([0, 1, 2])
    for (k, v), w in zip(G.state_dict().items(), tr.recipe.G_ema.state_dict().values()):
        assert torch.equal(v, w), k
    raw = load_generator(tmp_path, ema=False)
    assert all(torch.equal(v, w) for v, w in zip(raw.state_dict().values(), tr.recipe.G.state_dict().values()))
    assert G(z, c, noise_mode="const").shape == (3, 3, 8, 8)


def test_resume_is_bit_identical(tmp_path):
    a = small_gan_trainer(ddp_safe=False)
    torch.manual_seed(123)
    for _ in range(3):
        a.step()
    a.save_checkpoint(tmp_path / "c.safetensors")
    for _ in range(3):
        a.step()
    b = small_gan_trainer(model_seed=7, ddp_safe=False)  # other initial weights: all must come from the file
    b.load_checkpoint(tmp_path / "c.safetensors")
    assert b.step_count == 3
    for _ in range(3):
        b.step()
    _assert_same(gan_tensors(a), gan_tensors(b))
    for name in ("G", "D"):
        sa, sb = a.recipe.optimizers()[name].state_dict(), b.recipe.optimizers()[name].state_dict()
        for i in sa["state"]:
            for k in sa["state"][i]:
                assert torch.equal(sa["state"][i][k], sb["state"][i][k]), (name, i, k)
    assert a.recipe.generator.get_state().equal(b.recipe.generator.get_state())


def test_bad_arguments_and_checkpoints(tmp_path):
    G, D = Generator(z_dim=16, w_dim=16, mapping_layers=2, **CFG), Discriminator(**CFG)
    rec = StyleGANTraining(G, D, batch_size=8)
    with pytest.raises(TypeError, match="recipe"):
        GANTrainer(G, small_dataset())
    with pytest.raises(ValueError, match="no labels"):
        GANTrainer(rec, torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8)))
    with pytest.raises(ValueError, match="generator makes"):
        GANTrainer(rec, torch.utils.data.TensorDataset(torch.zeros(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="batch_size"):
        GANTrainer(rec, small_dataset(), batch_size=0)
    tr = small_gan_trainer()
    tr.save_checkpoint(tmp_path / "g.safetensors")
    from train_fixtures import small_trainer

    diff = small_trainer()
    with pytest.raises(ValueError, match="not a diffusion one"):
        diff.load_checkpoint(tmp_path / "g.safetensors")
    diff.save_checkpoint(tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="not a gan one"):
        tr.load_checkpoint(tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="not a GAN checkpoint"):
        load_generator(tmp_path / "d.safetensors")
    other = GANTrainer(StyleGANTraining(Generator(z_dim=16, w_dim=16, mapping_layers=2, **{**CFG, "channel_max": 4}),
                                        Discriminator(**CFG), batch_size=8), small_dataset(), progress=False)
    with pytest.raises(ValueError, match="does not fit"):
        other.load_checkpoint(tmp_path / "g.safetensors")
    with pytest.raises(FileNotFoundError):
        tr.load_checkpoint(tmp_path / "missing")


def test_non_finite_loss_stops(tmp_path):
    tr = small_gan_trainer()
    with torch.no_grad():
        tr.recipe.D.out.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step"):
        tr.train(2)


def test_two_process_torchrun_equals_one_process(tmp_path):
    """torchrun with 2 gloo processes, global batch 8 (4 each) == one process with batch 8."""
    steps = 3
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "gan_fixtures.py"), str(tmp_path), str(steps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "ddp_step1.safetensors"))
    ddp_losses = json.loads((tmp_path / "ddp_losses.json").read_text())
    tr = small_gan_trainer()
    losses = [{k: float(v) for k, v in sorted(tr.step().items())}]
    ref = {**gan_tensors(tr), **{f"grad/{k}": v for k, v in gan_grads(tr).items()}}
    losses += [{k: float(v) for k, v in sorted(tr.step().items())} for _ in range(steps - 1)]
    assert [sorted(d) for d in ddp_losses] == [sorted(d) for d in losses]
    # step 1 agrees to rounding (the all-reduce sums in another order); later steps differ by what
    # Adam (beta1 = 0: ~lr * sign(grad) early on) makes of rounding-level gradients (~1e-5 relative)
    for i, (a, b) in enumerate(zip(ddp_losses, losses)):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6 if i == 0 else 1e-3, abs=1e-7), (i, k)
    assert ref.keys() == got.keys()
    for k in ref:
        if k.startswith("grad/"):
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=k)
        else:  # one Adam step of +-lr on rounding-level gradients
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=5e-3, msg=k)
