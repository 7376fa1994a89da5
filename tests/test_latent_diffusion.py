"""Latent diffusion (fastgen.diffusion.latent, fastgen.train.latent, fastgen.models.latent_tools, the CLI)
with an untrained tiny VAE (16x16 RGB <-> 4x8x8) and a tiny latent U-Net: seconds on a CPU."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import fastgen
from fastgen.cli import main
from fastgen.data import TensorImageDataset, make_shapes
from fastgen.diffusion import SAMPLERS, LatentDataset, LatentDiffusion
from fastgen.models import UNet
from fastgen.models.latent_tools import apply_attribute, attribute_vector, interpolate, lerp, slerp
from fastgen.models.vae import VAE
from fastgen.train import LatentDiffusionTrainer, load_latent_diffusion
from fastgen.train import checkpoint as ckpt

SIZE, CLASSES = 16, 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These shapes are far too small for intra-op threads; on a shared, loaded CPU OpenMP
    oversubscription made them 10-40x slower (measured), so this module runs single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(image_size=SIZE, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=4,
               attention=False, num_groups=4)


def tiny_unet(num_classes=CLASSES, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(image_size=8, in_channels=4, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=2, num_groups=4, num_classes=num_classes)


def tiny_ldm(num_classes=CLASSES, **kw) -> LatentDiffusion:
    return LatentDiffusion(tiny_vae(), tiny_unet(num_classes), num_classes=num_classes, p_uncond=0.25, **kw)


def images(count: int = 24, seed: int = 0):
    return make_shapes(SIZE, count, seed=seed)


def dataset(count: int = 24) -> TensorImageDataset:
    x, y = images(count)
    return TensorImageDataset(x, y)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_trainer(**kw) -> LatentDiffusionTrainer:
    opts = dict(batch_size=8, lr=1e-3, ema_decay=0.9, warmup_steps=2, seed=3, log_every=0, progress=False,
                sample_steps=2, sample_count=4)
    opts.update(kw)
    return LatentDiffusionTrainer(tiny_ldm(), dataset(), **opts)


# ------------------------------------------------------------------ the model
def test_scale_factor_gives_unit_std_latents():
    ldm = tiny_ldm()
    x, y = images(32)
    assert not ldm.has_scale_factor
    with pytest.raises(ValueError, match="scale_factor is not set"):
        ldm.encode(x)
    s = ldm.estimate_scale_factor(x, n=32, batch_size=10)
    assert ldm.has_scale_factor and math.isclose(float(ldm.scale_factor), s, rel_tol=1e-6)
    with torch.no_grad():
        z = ldm.encode(x)
    assert abs(float(z.double().std()) - 1.0) < 1e-5
    # the same value from a dataset and from a DataLoader of (images, labels) batches; n counts images
    ds = TensorImageDataset(x, y)
    assert math.isclose(tiny_ldm().estimate_scale_factor(ds, n=32), s, rel_tol=1e-6)
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    assert math.isclose(tiny_ldm().estimate_scale_factor(loader, n=32), s, rel_tol=1e-6)
    assert not math.isclose(tiny_ldm().estimate_scale_factor(x, n=8), s, rel_tol=1e-6)
    # posterior samples: unit std for latents drawn the same way
    ps = tiny_ldm(posterior="sample")
    ps.estimate_scale_factor(x, n=32, generator=gen(5))
    with torch.no_grad():
        zs = ps.encode(x, generator=gen(5))
    assert abs(float(zs.double().std()) - 1.0) < 1e-5
    assert float(ps.scale_factor) < s  # sampling adds the posterior variance
    # in the state dict
    sd = ldm.state_dict()
    assert sd["scale_factor"].item() == float(ldm.scale_factor)
    other = tiny_ldm()
    other.load_state_dict(sd)
    assert other.has_scale_factor and float(other.scale_factor) == float(ldm.scale_factor)


def test_encode_decode_shapes_and_protocol():
    ldm = tiny_ldm(scale_factor=0.5)
    x, _ = images(3)
    with torch.no_grad():
        z = ldm.encode(x)
        assert z.shape == (3, 4, 8, 8) and ldm.latent_shape == (4, 8, 8)
        torch.testing.assert_close(z, 0.5 * ldm.autoencoder.encode(x).mean)
        img = ldm.decode(z)
        assert img.shape == x.shape
        torch.testing.assert_close(img, ldm.autoencoder.decode(z / 0.5))
    with pytest.raises(ValueError, match="z must have shape"):
        ldm.decode(torch.zeros(2, 4, 4, 4))

    class TensorAE(torch.nn.Module):  # a deterministic autoencoder: encode returns a tensor
        def __init__(self):
            super().__init__()
            self.down = torch.nn.Conv2d(3, 2, 2, stride=2)
            self.up = torch.nn.ConvTranspose2d(2, 3, 2, stride=2)

        def encode(self, x):
            return self.down(x)

        def decode(self, z):
            return self.up(z)

    unet = UNet(image_size=8, in_channels=2, model_channels=8, channel_mult=(1,), num_res_blocks=1,
                attention_resolutions=(), num_groups=4)
    plain = LatentDiffusion(TensorAE(), unet)
    with pytest.raises(ValueError, match="latent shape is unknown"):
        plain.latent_shape
    plain.estimate_scale_factor(x, n=3)
    assert plain.latent_shape == (2, 8, 8)
    out = plain.sample(2, steps=2, generator=gen(), progress=False)
    assert out.shape == (2, 3, SIZE, SIZE) and torch.isfinite(out).all()


def test_diffusers_autoencoder_kl_follows_the_protocol():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                 latent_channels=4, norm_num_groups=4, sample_size=SIZE)
    ldm = LatentDiffusion(ae, tiny_unet(None), posterior="sample")
    x, _ = images(4)
    ldm.estimate_scale_factor(x, n=4, generator=gen(1))
    assert ldm.latent_shape == (4, 8, 8) and not ae.training
    with torch.no_grad():
        want = ae.encode(x).latent_dist.sample(generator=gen(2)) * ldm.scale_factor
        torch.testing.assert_close(ldm.encode(x, generator=gen(2)), want)
    out = ldm.sample(2, steps=2, generator=gen(), progress=False)
    assert out.shape == (2, 3, SIZE, SIZE) and torch.isfinite(out).all()


def test_bad_arguments_name_the_argument():
    vae, unet = tiny_vae(), tiny_unet()
    with pytest.raises(TypeError, match="autoencoder"):
        LatentDiffusion(torch.nn.Linear(2, 2), unet)
    with pytest.raises(TypeError, match="diffusion"):
        LatentDiffusion(vae, "unet")
    with pytest.raises(ValueError, match="posterior"):
        LatentDiffusion(vae, unet, posterior="mode")
    with pytest.raises(ValueError, match="scale_factor"):
        LatentDiffusion(vae, unet, scale_factor=0.0)
    with pytest.raises(ValueError, match="latent_shape"):
        LatentDiffusion(vae, unet, latent_shape=(3, 8, 8))  # the U-Net takes 4 channels
    with pytest.raises(TypeError, match="already a GaussianDiffusion"):
        LatentDiffusion(vae, fastgen.diffusion.GaussianDiffusion(unet), num_classes=4)
    ldm = tiny_ldm(scale_factor=1.0)
    with pytest.raises(ValueError, match="n must be"):
        ldm.sample(0)
    with pytest.raises(ValueError, match="n must be"):
        ldm.estimate_scale_factor(images(4)[0], n=1)
    with pytest.raises(ValueError, match="class_labels"):
        ldm.training_loss(images(2)[0], torch.tensor([0, 9]))
    with pytest.raises(TypeError, match="x must be"):
        ldm.encode([1, 2])


def test_autoencoder_is_frozen():
    ldm = tiny_ldm()
    ae = ldm.autoencoder
    assert all(not p.requires_grad for p in ae.parameters())
    ldm.train()
    assert not ae.training and ldm.diffusion.training
    x, y = images(4)
    ldm.estimate_scale_factor(x, n=4)
    ldm.training_loss(x, y).backward()
    assert all(p.grad is None for p in ae.parameters())
    assert any(p.grad is not None for p in ldm.diffusion.model.parameters())
    assert {id(p) for p in ldm.trainable_parameters()} == {id(p) for p in ldm.diffusion.model.parameters()}
    tr = small_trainer()
    tr.train(1)
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt_ids.isdisjoint({id(p) for p in tr.ldm.autoencoder.parameters()})
    assert not tr.ldm.autoencoder.training


def test_training_loss_finite_and_falls():
    ldm = tiny_ldm()
    x, y = images(8)
    ldm.estimate_scale_factor(x, n=8)
    opt = torch.optim.Adam(ldm.trainable_parameters(), lr=3e-3)
    t = torch.randint(0, 1000, (8,), generator=gen(1))
    noise = torch.randn((8, 4, 8, 8), generator=gen(2))
    drop = torch.zeros(8, dtype=torch.bool)
    losses = []
    for _ in range(15):  # one fixed batch, timesteps and noise: the loss must go down
        loss = ldm.training_loss(x, y, t=t, noise=noise, label_drop=drop)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampling_runs_on_every_sampler_with_cfg(name):
    ldm = tiny_ldm(scale_factor=1.3)
    labels = torch.arange(3) % CLASSES
    imgs, lat = ldm.sample(3, sampler=name, steps=2, class_labels=labels, guidance_scale=3.0, generator=gen(),
                           progress=False, return_latents=True)
    assert imgs.shape == (3, 3, SIZE, SIZE) and lat.shape == (3, 4, 8, 8)
    assert torch.isfinite(imgs).all() and torch.isfinite(lat).all()
    assert imgs.abs().max() <= 1.0  # clamped
    torch.testing.assert_close(imgs, ldm.decode(lat).clamp(-1, 1))


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp_2m"])
def test_sampling_matches_the_torch_backend(name):
    ldm = tiny_ldm(scale_factor=1.3)
    kw = dict(sampler=name, steps=3, class_labels=torch.arange(4), guidance_scale=2.0, progress=False)
    fast = ldm.sample(4, generator=gen(7), **kw)
    with fastgen.use_backend("torch"):
        ref = ldm.sample(4, generator=gen(7), **kw)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the trainer
def test_latent_dataset_and_trainer_latents():
    ldm = tiny_ldm()
    ds = dataset()
    ldm.estimate_scale_factor(ds, n=24)
    lat = ldm.latent_dataset(ds, batch_size=5)
    assert isinstance(lat, LatentDataset) and len(lat) == 24 and lat.num_classes == CLASSES
    z, label = lat[3]
    with torch.no_grad():
        torch.testing.assert_close(z, ldm.encode(ds[3][0][None])[0])
    assert int(label) == int(ds[3][1])
    unlabelled = ldm.latent_dataset(TensorImageDataset(images(5)[0]))
    assert unlabelled.labels is None and int(unlabelled[0][1]) == -1
    # a prepared LatentDataset is used as is; one scaled differently is refused
    tr = LatentDiffusionTrainer(ldm, lat, batch_size=8, progress=False, log_every=0)
    assert tr.latents is lat and tr.image_shape == (4, 8, 8)
    ldm2 = tiny_ldm(scale_factor=2.0)
    with pytest.raises(ValueError, match="scaled by"):
        LatentDiffusionTrainer(ldm2, lat, batch_size=8, progress=False)
    with pytest.raises(TypeError, match="ldm must be"):
        LatentDiffusionTrainer(ldm.diffusion, ds, batch_size=8)


def test_trainer_estimates_scale_writes_grids_and_checkpoint_round_trip(tmp_path):
    tr = small_trainer(out_dir=tmp_path, sample_every=2, checkpoint_every=2)
    assert tr.ldm.has_scale_factor and tr.config["clip_sample"] is False
    tr.train(2)
    from PIL import Image
    with Image.open(tmp_path / "samples" / "step_00000002.png") as im:
        assert im.size == (2 + 2 * (SIZE * 4 + 2),) * 2  # 2x2 decoded 16 px images upscaled 4x
    path = tmp_path / "checkpoints" / "step_00000002.safetensors"
    tensors, meta = ckpt.load_checkpoint(path)
    assert meta["kind"] == "latent_diffusion" and meta["autoencoder_class"] == "VAE"
    assert meta["latent"] == {"scale_factor": float(tr.ldm.scale_factor), "latent_shape": [4, 8, 8],
                              "posterior": "mean"}
    assert any(k.startswith("autoencoder/encoder.") for k in tensors)
    loaded = load_latent_diffusion(tmp_path)  # the run folder: its newest checkpoint
    assert not loaded.training and not loaded.autoencoder.training
    assert float(loaded.scale_factor) == float(tr.ldm.scale_factor)
    labels = torch.arange(4)
    want = tr.sample(4, class_labels=labels, seed=11)  # EMA weights, trainer's sampler settings
    got = loaded.sample(4, sampler="ddim", steps=2, class_labels=labels, guidance_scale=1.0,
                        generator=torch.Generator().manual_seed(11), progress=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    raw = load_latent_diffusion(path, ema=False)
    for p, q in zip(raw.diffusion.model.parameters(), tr.model.parameters()):
        assert torch.equal(p, q)
    # another autoencoder instance receives the saved weights
    fresh = tiny_vae(seed=5)
    mine = load_latent_diffusion(path, autoencoder=fresh)
    assert mine.autoencoder is fresh
    assert torch.equal(fresh.encoder.conv_in.weight, tr.ldm.autoencoder.encoder.conv_in.weight)
    bad = tmp_path / "other.safetensors"
    ckpt.save_checkpoint(bad, {"x": torch.zeros(1)}, {"kind": "diffusion"})
    with pytest.raises(ValueError, match="not a latent-diffusion checkpoint"):
        load_latent_diffusion(bad)


def _trainer_state(tr):
    return {**{f"m/{k}": v.clone() for k, v in tr.model.state_dict().items()},
            **{f"e/{k}": v.clone() for k, v in tr.ema.state_dict().items()}}


def test_resume_is_exact(tmp_path):
    a = small_trainer()
    a.train(4)
    b = small_trainer()
    b.train(2)
    path = b.save_checkpoint(tmp_path / "mid.safetensors")
    torch.manual_seed(99)
    c = small_trainer()
    assert c.load_checkpoint(path) == 2
    c.train(2)
    sa, sc = _trainer_state(a), _trainer_state(c)
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    assert a.generator.get_state().equal(c.generator.get_state())
    # a different autoencoder (other weights) or scale factor cannot resume this run
    d = LatentDiffusionTrainer(LatentDiffusion(tiny_vae(seed=1), tiny_unet(), num_classes=CLASSES), dataset(),
                               batch_size=8, seed=3, progress=False, log_every=0, ema_decay=0.9)
    with pytest.raises(ValueError, match="another autoencoder"):
        d.load_checkpoint(path)
    e = LatentDiffusionTrainer(tiny_ldm(scale_factor=1.0), dataset(), batch_size=8, seed=3, progress=False,
                               log_every=0, ema_decay=0.9)
    with pytest.raises(ValueError, match="scale_factor"):
        e.load_checkpoint(path)


# ------------------------------------------------------------------ the command line
@pytest.fixture
def vae_run(tmp_path):
    """A real VAE trainer run folder (one step of a tiny VAE), what ``--vae`` takes."""
    from fastgen.train import VAETrainer

    run = tmp_path / "vae_run"
    VAETrainer(tiny_vae(), dataset(16), batch_size=8, seed=0, progress=False, log_every=0, ema_decay=0.9,
               out_dir=run, checkpoint_every=1, sample_every=0).train(1)
    return run


TINY = ["--batch-size", "8", "--sample-steps", "2", "--no-progress", "--log-every", "1", "--scale-samples", "16"]


def test_cli_train_ldm_resume_and_sample(tmp_path, vae_run, capsys, monkeypatch):
    import fastgen.data as data_mod

    monkeypatch.setattr(data_mod, "shapes_dataset", lambda size, count, seed: dataset(24))
    out = tmp_path / "run"
    assert main(["train", "ldm", "--vae", str(vae_run), *TINY, "--steps", "2", "--checkpoint-every", "2",
                 "--sample-every", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps" in printed and "scale factor" in printed
    assert (out / "samples" / "final.png").is_file()
    assert main(["train", "ldm", "--vae", str(vae_run), *TINY, "--steps", "1", "--out", str(out),
                 "--resume"]) == 0
    assert "resumed from step 2" in capsys.readouterr().err
    assert ckpt.list_checkpoints(out / "checkpoints")[-1][0] == 3
    png = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(out), "--sampler", "ddim", "--steps", "2", "--guidance", "3",
                 "--num-images", "4", "--out", str(png), "--no-progress"]) == 0
    assert "latent diffusion" in capsys.readouterr().out
    from PIL import Image
    with Image.open(png) as im:
        assert im.size == (2 + 2 * (SIZE * 4 + 2),) * 2
    assert main(["sample", "--checkpoint", str(out), "--class-label", "9", "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--class-label" in err and "\n" not in err


def test_cli_ldm_user_errors_are_one_line(tmp_path, vae_run, capsys):
    import importlib.util

    cases = [
        (["train", "ldm", "--vae", str(vae_run), "--size", "9", "--steps", "1"], "--size 9"),
        (["train", "ldm", "--vae", str(vae_run), "--size", "12", "--steps", "1"], "divisible by 8"),
        (["train", "ldm", "--vae", str(vae_run), "--data", "/no/such/folder", "--steps", "1"], "/no/such/folder"),
    ]
    if importlib.util.find_spec("sklearn") is not None:  # 1-channel digits for a 3-channel VAE
        cases.append((["train", "ldm", "--vae", str(vae_run), "--data", "digits", "--steps", "1"], "channel"))
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as exc:
        main(["train", "ldm", "--steps", "1"])  # --vae is required
    assert exc.value.code == 2


# ------------------------------------------------------------------ latent tools
def test_lerp_and_slerp_against_hand_computed_values():
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(lerp(a, b, 0.25), torch.tensor([0.75, 0.5, 0.0], dtype=torch.float64))
    # angle pi/2: coefficients sin((1-t) pi/2), sin(t pi/2)
    t = 0.3
    want = math.sin(0.7 * math.pi / 2) * a + math.sin(0.3 * math.pi / 2) * b
    torch.testing.assert_close(slerp(a, b, t), want, rtol=1e-12, atol=1e-12)
    # an angle of 60 degrees, batched with a second pair, several t at once
    c = torch.tensor([0.5, math.sqrt(3) / 2, 0.0], dtype=torch.float64)
    z0, z1 = torch.stack([a, a]), torch.stack([b, c])
    ts = torch.tensor([0.0, 0.5, 1.0])
    out = slerp(z0, z1, ts)
    assert out.shape == (3, 2, 3) and out.dtype == torch.float64
    w = math.pi / 3
    want_mid = (math.sin(0.5 * w) * a + math.sin(0.5 * w) * c) / math.sin(w)
    torch.testing.assert_close(out[1, 1], want_mid, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0], z0, rtol=0, atol=1e-15)
    torch.testing.assert_close(out[2], z1, rtol=0, atol=1e-15)
    torch.testing.assert_close(lerp(z0, z1, ts)[1], (z0 + z1) / 2)


def test_slerp_keeps_unit_norm_and_endpoints():
    g = gen(3)
    u = torch.randn(5, 4, 8, 8, generator=g)
    v = torch.randn(5, 4, 8, 8, generator=g)
    # orthogonalise per sample, then normalise: unit, orthogonal pairs
    uf, vf = u.flatten(1), v.flatten(1)
    uf = uf / uf.norm(dim=1, keepdim=True)
    vf = vf - (vf * uf).sum(1, keepdim=True) * uf
    vf = vf / vf.norm(dim=1, keepdim=True)
    u, v = uf.view_as(u), vf.view_as(v)
    ts = torch.linspace(0, 1, 9)
    path = slerp(u, v, ts)
    norms = path.flatten(2).norm(dim=2)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    torch.testing.assert_close(path[0], u, rtol=0, atol=1e-6)
    torch.testing.assert_close(path[-1], v, rtol=0, atol=1e-6)
    # the angle to u grows linearly: t * pi / 2
    cos_to_u = (path.flatten(2) * u.flatten(1)).sum(2)
    torch.testing.assert_close(cos_to_u, torch.cos(ts[:, None] * math.pi / 2).expand_as(cos_to_u), rtol=0, atol=1e-5)
    # lerp's midpoint of orthogonal unit vectors has norm 1/sqrt(2)
    torch.testing.assert_close(lerp(u, v, 0.5).flatten(1).norm(dim=1), torch.full((5,), 2 ** -0.5), rtol=0, atol=1e-5)


def test_slerp_nearly_parallel_falls_back_to_lerp():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 1e-9], [-3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # parallel, antiparallel, zero
    out = slerp(a, b, torch.tensor([0.25, 0.5]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, lerp(a, b, torch.tensor([0.25, 0.5])), rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 6, generator=gen(1))
    torch.testing.assert_close(slerp(x, x, 0.3), x)


def test_interpolate_decodes_grid_rows():
    vae = tiny_vae().eval()
    g = gen(4)
    z0, z1 = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    out = interpolate(vae, z0, z1, steps=5, batch_size=3)
    assert out.shape == (10, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(out[0], vae.decode(z0[:1])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[4], vae.decode(z1[:1])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[5], vae.decode(z0[1:])[0], rtol=1e-5, atol=1e-5)
        mid = slerp(z0, z1, 0.5)
        torch.testing.assert_close(out[2], vae.decode(mid[:1])[0], rtol=1e-5, atol=1e-5)
    single = interpolate(vae, z0[0], z1[0], steps=3, mode="lerp")  # one latent [C, h, w]
    assert single.shape == (3, 3, SIZE, SIZE)
    # diffusion initial noise: the "decoder" is a deterministic sampler from that noise
    ldm = tiny_ldm(scale_factor=1.0)
    n0, n1 = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    def run(x_T):
        return ldm.sample(len(x_T), sampler="ddim", steps=2, class_labels=torch.zeros(len(x_T), dtype=torch.long),
                          initial_noise=x_T, progress=False)
    path = interpolate(run, n0, n1, steps=3)
    assert path.shape == (3, 3, SIZE, SIZE)
    torch.testing.assert_close(path[0], run(n0[None])[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        interpolate(vae, z0, z1, steps=1)
    with pytest.raises(ValueError, match="mode"):
        interpolate(vae, z0, z1, mode="cubic")
    with pytest.raises(ValueError, match="latent shape"):
        interpolate(vae, torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="decoder"):
        interpolate(42, z0, z1)


def test_attribute_vector_arithmetic():
    g = gen(6)
    base = torch.randn(10, 4, 2, 2, generator=g, dtype=torch.float64)
    direction = torch.randn(4, 2, 2, generator=g, dtype=torch.float64)
    mask = torch.tensor([1, 0] * 5, dtype=torch.bool)
    latents = base + mask.view(-1, 1, 1, 1) * direction
    v = attribute_vector(latents, mask)
    torch.testing.assert_close(v, base[mask].mean(0) + direction - base[~mask].mean(0))
    torch.testing.assert_close(attribute_vector(latents, mask.long()), v)
    z = latents[~mask]
    torch.testing.assert_close(apply_attribute(z, v, 1.0), z + v)
    torch.testing.assert_close(apply_attribute(z, v, -0.5), z - 0.5 * v)
    s = torch.linspace(0, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(apply_attribute(z, v, s), z + s.view(-1, 1, 1, 1) * v)
    torch.testing.assert_close(apply_attribute(z[0], v, 2.0), z[0] + 2 * v)
    with pytest.raises(ValueError, match="some but not all"):
        attribute_vector(latents, torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have shape"):
        attribute_vector(latents, mask[:3])
    with pytest.raises(ValueError, match="mask must be a bool"):
        attribute_vector(latents, torch.full((10,), 0.5))
    with pytest.raises(ValueError, match="vector must have the shape"):
        apply_attribute(z, v[:2])
    with pytest.raises(ValueError, match="strength"):
        apply_attribute(z, v, torch.ones(3))


def test_latent_tools_bad_arguments():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        slerp(a, torch.zeros(2, 4), 0.5)
    with pytest.raises(TypeError, match="floating"):
        lerp(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="t must be"):
        slerp(a, a, torch.zeros(2, 2))
    with pytest.raises(TypeError, match="t must be"):
        lerp(a, a, "half")
    with pytest.raises(ValueError, match="finite"):
        lerp(a, a, float("nan"))
    with pytest.raises(ValueError, match="parallel_threshold"):
        slerp(a, a, 0.5, parallel_threshold=1.5)
