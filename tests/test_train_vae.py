"""VAETrainer and the VAE-GAN recipe: training lowers the loss, logs / grids / checkpoints, exact
resume, load_vae, the adaptive adversarial weight, the CLI, and torchrun (2 gloo processes == 1)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgen.cli import main
from fastgen.data import make_shapes, shapes_dataset
from fastgen.gan import VAEGANTraining
from fastgen.gan.losses import d_loss, g_loss
from fastgen.models import PatchGANDiscriminator
from fastgen.models.vae import VAE
from fastgen.train import GANTrainer, VAETrainer, load_generator, load_vae
from vae_fixtures import SIZE, small_data, small_vae_trainer, vae_tensors

HERE = Path(__file__).resolve().parent


def _same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- VAETrainer
def test_training_steps_lower_the_loss():
    """tiny preset, 16 px shapes, fixed seed: the negative ELBO of a fixed batch with fixed noise falls."""
    tr = small_vae_trainer(batch_size=16, ema_decay=None)
    x = torch.stack([tr.dataset[i][0] for i in range(16)])
    noise = torch.randn((16,) + tr.vae.latent_shape, generator=torch.Generator().manual_seed(9))

    def probe():
        with torch.no_grad():
            return tr.vae.loss(x, noise=noise)

    before = probe()
    hist = [tr.step() for _ in range(12)]
    after = probe()
    assert all(torch.isfinite(v).all() for h in hist for v in h.values())
    assert float(after.loss) < 0.7 * float(before.loss), (float(before.loss), float(after.loss))
    assert float(after.nll) < float(before.nll)
    h = hist[-1]
    torch.testing.assert_close(h["elbo"], -(h["nll"] + h["kl"]))
    torch.testing.assert_close(h["bpd"], tr.vae.bits_per_dim(h["elbo"], x))


def test_train_logs_grids_checkpoints_and_kl_warmup(tmp_path):
    tr = small_vae_trainer(out_dir=tmp_path, log_every=2, sample_every=3, checkpoint_every=3, sample_count=4,
                           beta=0.5, kl_warmup_steps=4)
    assert [tr.beta_at(s) for s in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    summary = tr.train(6)
    assert summary["steps"] == 6 and {"loss", "nll", "kl", "elbo", "bpd"} <= summary.keys()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert [r["beta"] for r in recs] == [0.25, 0.5, 0.5]  # beta of each window's last step
    assert all(r["elbo"] < 0 and r["kl"] > 0 for r in recs)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_00000003.png", "step_00000006.png"]
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step_00000003.safetensors",
                                                                             "step_00000006.safetensors"]
    grid = tr.sample_grid()
    assert grid.shape == (12, 3, SIZE, SIZE)  # rows: inputs, reconstructions, prior samples
    assert torch.equal(grid[:4], torch.stack([tr.dataset[i][0] for i in range(4)]))
    from PIL import Image
    with Image.open(tmp_path / "samples" / "step_00000006.png") as im:
        assert im.size == (2 + 4 * (64 + 2), 2 + 3 * (64 + 2))
    assert tr.sample(3).shape == (3, 3, SIZE, SIZE)
    # load_vae: the EMA weights by default, the raw ones on request; eval mode
    vae = load_vae(tmp_path)
    assert not vae.training and vae.config == tr.vae.config
    _same_state(vae, tr.ema.module)
    _same_state(load_vae(tmp_path / "checkpoints" / "step_00000006.safetensors", ema=False), tr.vae)
    x = torch.stack([tr.dataset[i][0] for i in range(2)])
    torch.testing.assert_close(vae.reconstruct(x), tr.ema.module.reconstruct(x))


def test_bf16_autocast_and_bernoulli_steps_are_finite():
    torch.manual_seed(0)
    tr = VAETrainer(VAE.from_preset("tiny", likelihood="bernoulli"), small_data(), batch_size=8, bf16=True,
                    grad_clip=1.0, progress=False, log_every=0)
    for _ in range(2):
        out = tr.step()
        assert all(torch.isfinite(v) for v in out.values()), out
    assert tr._last_grad_norm is not None and all(p.dtype == torch.float32 for p in tr.vae.parameters())
    r = _vaegan(bf16=True)
    out = r.step(make_shapes(SIZE, 16)[0])
    assert all(torch.isfinite(v) for v in out.values()), out


def test_resume_is_exact(tmp_path):
    """train 4 steps == train 2, checkpoint, resume in a fresh trainer (other initial weights), train 2."""
    a = small_vae_trainer(kl_warmup_steps=3)
    for _ in range(2):
        a.step()
    a.save_checkpoint(tmp_path / "c.safetensors")
    for _ in range(2):
        a.step()
    b = small_vae_trainer(model_seed=5, kl_warmup_steps=3)
    assert b.load_checkpoint(tmp_path / "c.safetensors") == 2
    for _ in range(2):
        b.step()
    ta, tb = vae_tensors(a), vae_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert a.generator.get_state().equal(b.generator.get_state())
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


def test_bad_trainer_arguments_and_checkpoints(tmp_path):
    vae = VAE.from_preset("tiny")
    with pytest.raises(TypeError, match="vae must be"):
        VAETrainer(torch.nn.Linear(2, 2), small_data())
    with pytest.raises(ValueError, match=r"dataset images are \(3, 32, 32\)"):
        VAETrainer(vae, shapes_dataset(32, 4))
    with pytest.raises(ValueError, match="dataset images are"):
        VAETrainer(vae, torch.utils.data.TensorDataset(torch.zeros(4, 1, 16, 16)))
    for kw, name in ((dict(beta=-1.0), "beta"), (dict(beta=float("nan")), "beta"), (dict(kl_warmup_steps=-1), "kl_warmup_steps"),
                     (dict(lr=-1.0), "lr"), (dict(ema_decay=1.0), "ema_decay"), (dict(bf16=1), "bf16"),
                     (dict(betas=(0.9,)), "betas"), (dict(grad_clip=-1.0), "grad_clip"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=name):
            VAETrainer(vae, small_data(), **kw)
    tr = small_vae_trainer()
    tr.save_checkpoint(tmp_path / "v.safetensors")
    from train_fixtures import small_trainer

    diff = small_trainer()
    diff.save_checkpoint(tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="not a vae one"):
        tr.load_checkpoint(tmp_path / "d.safetensors")
    with pytest.raises(ValueError, match="not a VAE checkpoint"):
        load_vae(tmp_path / "d.safetensors")
    other = VAETrainer(VAE.from_preset("tiny", base_channels=8), small_data(), progress=False)
    with pytest.raises(ValueError, match="does not fit"):
        other.load_checkpoint(tmp_path / "v.safetensors")
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "missing")


def test_two_process_torchrun_equals_one_process(tmp_path):
    """torchrun with 2 gloo processes, global batch 8 (4 each) == one process with batch 8."""
    steps = 2
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "vae_fixtures.py"), str(tmp_path), str(steps)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "ddp.safetensors"))
    ddp_losses = json.loads((tmp_path / "ddp_losses.json").read_text())
    tr = small_vae_trainer()
    losses = [{k: float(v) for k, v in sorted(tr.step().items())} for _ in range(steps)]
    ref = vae_tensors(tr)
    assert ref.keys() == got.keys()
    for a, b in zip(ddp_losses, losses):  # the mean of the two halves' means: equal up to rounding
        assert a == pytest.approx(b, rel=1e-5)
    for k in ref:  # gradients are all-reduced (sum order differs); Adam amplifies that only slightly
        if k.startswith("grad/"):  # norm-relative: these weight gradients are sums of cancelling terms
            err = float((got[k] - ref[k]).norm())
            assert err <= 1e-5 * float(ref[k].norm()) + 1e-7, (k, err, float(ref[k].norm()))
        else:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=5e-6, msg=k)


# ----------------------------------------------------------------------------- VAE-GAN
def _vaegan(seed=0, **kw):
    torch.manual_seed(seed)
    vae = VAE.from_preset("tiny")
    D = PatchGANDiscriminator(in_channels=3, base_channels=8, n_layers=1)
    kw.setdefault("lr", 1e-3)
    return VAEGANTraining(vae, D, batch_size=16, generator=torch.Generator().manual_seed(1), **kw)


def test_vaegan_runs_and_the_discriminator_learns():
    x = make_shapes(SIZE, 32)[0]
    r = _vaegan()
    held = x[:16]

    def d_margin():
        with torch.no_grad():
            rec = r.vae.reconstruct(held)
            return (float(d_loss("hinge", r.D(held), r.D(rec)).mean()),
                    float(r.D(held).mean() - r.D(rec).mean()))

    loss0, margin0 = d_margin()
    hist = [r.step(x[(i % 2) * 16:(i % 2) * 16 + 16]) for i in range(12)]
    loss1, margin1 = d_margin()
    assert all(torch.isfinite(v).all() for h in hist for v in h.values())
    assert {"l1", "kl", "g", "g_adv", "adv_weight", "d", "d_real", "d_fake"} <= hist[0].keys()
    assert float(hist[-1]["l1"]) < float(hist[0]["l1"])
    # D separates real images from reconstructions better than at the start (measured 1.98 -> 1.89, 0.02 -> 0.11)
    assert loss1 < loss0 and margin1 > margin0 + 0.03, (loss0, loss1, margin0, margin1)
    grid = r.sample(6, generator=torch.Generator().manual_seed(0))
    assert grid.shape == (6, 3, SIZE, SIZE)  # rows of (input, reconstruction, prior sample)
    assert torch.equal(grid[0], x[0])


def test_vaegan_adaptive_weight_is_the_gradient_norm_ratio():
    """The logged adversarial weight equals adv_weight ||grad_W L1|| / (||grad_W g|| + 1e-4) at the
    decoder's last conv weight W, computed by hand for the step's own noise; so the adversarial
    gradient at W has adv_weight times the norm of the L1 gradient there."""
    x = make_shapes(SIZE, 16)[0]
    r = _vaegan(adv_weight=0.7)
    state = r.generator.get_state()
    noise = torch.randn((16,) + r.vae.latent_shape, generator=torch.Generator().set_state(state))
    W = r.vae.decoder.conv_out.weight
    out = r.vae(x, noise=noise)
    l1 = (out.recon - x).abs().mean()
    adv = g_loss("hinge", r.D(out.recon)).mean()
    g_rec, = torch.autograd.grad(l1, W, retain_graph=True)
    g_adv, = torch.autograd.grad(adv, W)
    want = 0.7 * g_rec.norm() / (g_adv.norm() + 1e-4)
    logs = r.step(x)
    torch.testing.assert_close(logs["adv_weight"], want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close((want * g_adv).norm(), 0.7 * g_rec.norm(), rtol=1e-3, atol=0)
    # a fixed weight without the adaptive scaling
    r2 = _vaegan(adv_weight=0.3, adaptive_weight=False)
    assert float(r2.step(x)["adv_weight"]) == pytest.approx(0.3)


def test_vaegan_disc_start_and_errors():
    x = make_shapes(SIZE, 16)[0]
    r = _vaegan(disc_start=2)
    d0 = {k: v.clone() for k, v in r.D.state_dict().items()}
    logs = [r.step(x) for _ in range(2)]
    assert all(set(h) == {"l1", "kl", "g"} for h in logs)  # no adversarial term, D untouched
    for k, v in r.D.state_dict().items():
        assert torch.equal(v, d0[k]), k
    assert {"d", "g_adv"} <= r.step(x).keys()
    vae = VAE.from_preset("tiny")
    D = PatchGANDiscriminator(in_channels=3, base_channels=8, n_layers=1)
    for kw, match in ((dict(loss="wasserstein"), "loss"), (dict(beta_kl=-1.0), "beta_kl"),
                      (dict(adv_weight=float("inf")), "adv_weight"), (dict(disc_start=-1), "disc_start"),
                      (dict(adaptive_weight="yes"), "adaptive_weight"), (dict(betas=(1.0, 0.9)), "betas")):
        with pytest.raises(ValueError, match=match):
            VAEGANTraining(vae, D, batch_size=4, **kw)
    with pytest.raises(ValueError, match="in_channels=6"):
        VAEGANTraining(vae, PatchGANDiscriminator(in_channels=6, base_channels=8, n_layers=1), batch_size=4)
    with pytest.raises(TypeError, match="vae must be"):
        VAEGANTraining(D, D, batch_size=4)
    with pytest.raises(ValueError, match=r"real must be \(N, 3, 16, 16\)"):
        VAEGANTraining(vae, D, batch_size=4).step(torch.zeros(2, 3, 8, 8))


def test_vaegan_resume_through_gan_trainer_and_load_vae(tmp_path):
    data = small_data(32)

    def trainer(seed=0):
        return GANTrainer(_vaegan(seed, ema_decay=0.9), data, batch_size=16, progress=False, log_every=0)

    a = trainer()
    for _ in range(2):
        a.step()
    a.save_checkpoint(tmp_path / "c.safetensors")
    for _ in range(2):
        a.step()
    b = trainer(seed=3)
    b.load_checkpoint(tmp_path / "c.safetensors")
    for _ in range(2):
        b.step()
    for ma, mb in zip(a.recipe.models().values(), b.recipe.models().values()):
        _same_state(ma, mb)
    _same_state(a.recipe.ema, b.recipe.ema)
    path = a.save_checkpoint(tmp_path / "d.safetensors")
    vae = load_vae(path)
    _same_state(vae, a.recipe.ema.module)
    _same_state(load_vae(path, ema=False), a.recipe.vae)
    with pytest.raises(ValueError, match="'VAE' generator"):
        load_generator(path)


# ----------------------------------------------------------------------------- CLI
TINY = ["--size", "16", "--preset", "tiny", "--batch-size", "8", "--no-progress", "--log-every", "1"]


def test_cli_train_vae_resume_and_sample(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "vae"
    assert main(["train", "vae", *TINY, "--steps", "2", "--checkpoint-every", "1", "--sample-every", "2",
                 "--beta", "0.5", "--kl-warmup-steps", "2", "--out", str(out)]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert (out / "samples" / "final.png").exists() and (out / "samples" / "step_00000002.png").exists()
    assert main(["train", "vae", *TINY, "--steps", "1", "--resume", "--out", str(out), "--sample-every", "0",
                 "--beta", "0.5", "--kl-warmup-steps", "2"]) == 0
    assert "resumed from step 2" in capsys.readouterr().err
    png = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(out), "--num-images", "4", "--temperature", "0.8",
                 "--out", str(png)]) == 0
    assert "4 VAE prior samples" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.size == (2 + 2 * 66, 2 + 2 * 66)
    gan = tmp_path / "vaegan"
    assert main(["train", "vae", *TINY, "--adversarial", "--likelihood", "bernoulli", "--steps", "2",
                 "--sample-every", "0", "--out", str(gan)]) == 0
    assert "adv_weight" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(gan), "--num-images", "2", "--out", str(png)]) == 0
    assert load_vae(gan).likelihood == "bernoulli"


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--size", "18"], "image_size = 18"),
    (["train", "vae", "--disc-start", "5"], "--disc-start only applies with --adversarial"),
    (["train", "vae", "--adversarial", "--kl-warmup-steps", "5"], "--kl-warmup-steps"),
    (["train", "vae", "--data", "/no/such/folder"], "neither"),
])
def test_cli_user_errors_are_one_line(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "x"), "--steps", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("argv", [["train", "vae", "--likelihood", "laplace"], ["train", "vae", "--beta", "-1"],
                                  ["train", "vae", "--preset", "huge"], ["sample", "--checkpoint", "x",
                                                                          "--temperature", "-1"]])
def test_cli_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_cli_sample_rejects_vae_only_flags_elsewhere(tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(["train", "vae", *TINY, "--steps", "1", "--sample-every", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(out), "--class-label", "1"]) == 1
    assert "unconditional" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(out), "--truncation", "0.5"]) == 1
    assert "--temperature" in capsys.readouterr().err
