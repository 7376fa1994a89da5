"""GANTraining: the classic GAN families (DCGAN, WGAN clip / GP, LSGAN, hinge + R1, conditional,
ACGAN, InfoGAN, DRAGAN) train a few steps with finite losses; step cadences; exact resume."""
import pytest
import torch

from fastgen.data import load_dataset
from fastgen.gan import GANTraining
from fastgen.models import DCGANDiscriminator, DCGANGenerator
from fastgen.train import GANTrainer

CONFIGS = {
    "dcgan": (dict(), dict(), dict()),
    "wgan-gp": (dict(), dict(norm="layer"), dict(loss="wasserstein", penalty="wgan-gp", d_steps=2, betas=(0.0, 0.9))),
    "wgan-clip": (dict(), dict(norm="none"), dict(loss="wasserstein", weight_clip=0.01, optimizer="rmsprop",
                                                  g_lr=5e-5, d_lr=5e-5)),
    "lsgan": (dict(), dict(), dict(loss="lsgan")),
    "hinge-r1-cond": (dict(c_dim=4), dict(c_dim=4, norm="none", spectral_norm=True),
                      dict(loss="hinge", penalty="r1", penalty_weight=1.0, penalty_interval=2)),
    "acgan": (dict(c_dim=4), dict(aux_classes=4), dict()),
    "infogan": (dict(info_cat_dims=(4,), info_cont_dim=2), dict(info_cat_dims=(4,), info_cont_dim=2), dict()),
    "dragan": (dict(), dict(norm="none"), dict(penalty="dragan", ema_decay=0.9)),
    "minimax-r2": (dict(), dict(norm="instance"), dict(loss="minimax", penalty="r2", penalty_weight=0.1)),
}


@pytest.fixture(scope="module")
def batches():
    data = load_dataset("shapes", size=16)
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(4):
        idx = torch.randint(0, len(data), (8,), generator=g)
        out.append((torch.stack([data[int(i)][0] for i in idx]), torch.stack([data[int(i)][1] for i in idx])))
    return out


def _recipe(name, **extra):
    gk, dk, rk = CONFIGS[name]
    torch.manual_seed(0)
    G, D = DCGANGenerator.from_preset("tiny", **gk), DCGANDiscriminator.from_preset("tiny", **dk)
    return GANTraining(G, D, batch_size=8, **{**rk, **extra})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recipes_run_with_finite_losses(name, batches):
    r = _recipe(name)
    hist = [r.step(*b) for b in batches]
    for h in hist:
        assert all(torch.isfinite(v) for v in h.values()), (name, h)
    d_steps = CONFIGS[name][2].get("d_steps", 1)
    assert [("g" in h) for h in hist] == [(i + 1) % d_steps == 0 for i in range(4)]
    pen, interval = CONFIGS[name][2].get("penalty"), CONFIGS[name][2].get("penalty_interval", 1)
    assert [("penalty" in h) for h in hist] == [pen is not None and i % interval == 0 for i in range(4)]
    if name in ("acgan", "infogan"):
        assert "d_heads" in hist[0] and float(hist[0]["g"]) > float(hist[0]["g_adv"])
    if name == "wgan-clip":
        assert max(float(p.abs().max()) for p in r.D.parameters()) <= 0.01 + 1e-7
    img = r.sample(4, torch.arange(4), torch.Generator().manual_seed(0))
    assert img.shape == (4, 3, 16, 16) and float(img.abs().max()) <= 1.0


def test_dcgan_discriminator_learns(batches):
    """A few D-heavy steps: D separates reals from the (still poor) fakes better than at the start."""
    r = _recipe("dcgan", d_steps=4)
    losses = [float(r.step(*batches[i % 4])["d_adv"]) for i in range(12)]
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_resume_through_the_trainer_is_exact(tmp_path):
    data = load_dataset("shapes", size=16, count=32)

    def trainer(seed=0):
        r = _recipe("hinge-r1-cond", ema_decay=0.9)
        if seed:
            torch.manual_seed(seed)
            for p in r.G.parameters():
                p.data.normal_()
        return GANTrainer(r, data, batch_size=8, progress=False, log_every=0)

    a = trainer()
    for _ in range(3):
        a.step()
    a.save_checkpoint(tmp_path / "c.safetensors")
    rng = torch.get_rng_state()
    for _ in range(3):
        a.step()
    b = trainer(seed=5)
    b.load_checkpoint(tmp_path / "c.safetensors")
    torch.set_rng_state(rng)
    for _ in range(3):
        b.step()
    for ma, mb in zip(a.recipe.models().values(), b.recipe.models().values()):
        for (k, v), w in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(v, w), k
    for (k, v), w in zip(a.recipe.G_ema.state_dict().items(), b.recipe.G_ema.state_dict().values()):
        assert torch.equal(v, w), k


def test_bad_arguments(batches):
    G, D = DCGANGenerator.from_preset("tiny"), DCGANDiscriminator.from_preset("tiny")
    with pytest.raises(ValueError, match="loss"):
        GANTraining(G, D, batch_size=8, loss="wgan")
    with pytest.raises(ValueError, match="penalty"):
        GANTraining(G, D, batch_size=8, penalty="gp")
    with pytest.raises(ValueError, match="d_steps"):
        GANTraining(G, D, batch_size=8, d_steps=0)
    with pytest.raises(TypeError, match="G must be"):
        GANTraining(D, D, batch_size=8)
    cond = GANTraining(DCGANGenerator.from_preset("tiny", c_dim=4), DCGANDiscriminator.from_preset("tiny", c_dim=4),
                       batch_size=8)
    with pytest.raises(ValueError, match="labels"):
        cond.step(batches[0][0])


def test_diagnostics_and_their_logging(tmp_path):
    from fastgen.gan import class_coverage, pairwise_diversity, relative_diversity

    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert pairwise_diversity(x) == pytest.approx((5 + 5 + 0) * 2 / 6)
    assert relative_diversity(torch.zeros(4, 2), x) == 0.0  # a collapsed generator
    with pytest.raises(ValueError):
        pairwise_diversity(torch.zeros(1, 3))

    class Fixed(torch.nn.Module):  # predicts class = the first pixel's sign
        def forward(self, img):
            s = img.flatten(1)[:, 0]
            return torch.stack([s * 10, -s * 10], dim=1)

    imgs = torch.tensor([1.0, 1.0, -1.0, 1.0]).reshape(4, 1, 1, 1)
    cov = class_coverage(imgs, Fixed(), 2, labels=torch.tensor([0, 0, 1, 1]))
    assert cov == {"coverage": 2, "histogram": [3, 1], "confident": 1.0, "accuracy": 0.75}

    data = load_dataset("shapes", size=16, count=64)
    r = _recipe("acgan")
    tr = GANTrainer(r, data, batch_size=8, progress=False, log_every=0, diagnostics_every=2, classifier=Fixed(),
                    out_dir=tmp_path)
    tr.train(2)
    rec = tr.diagnostics_history[-1]
    assert rec["step"] == 2 and 0 <= rec["diversity"] and "coverage" in rec and "accuracy" in rec
    assert '"diagnostics"' in (tmp_path / "metrics.jsonl").read_text()


@pytest.mark.parametrize("name", ["wgan-gp", "acgan"])
def test_bf16_autocast_steps(name, batches):
    r = _recipe(name, bf16=True)
    for b in batches[:2]:
        out = r.step(*b)
        assert all(torch.isfinite(v) for v in out.values()), out
    assert all(p.dtype == torch.float32 for p in r.G.parameters())
    assert r.config["bf16"] is True


def test_stylegan_and_translation_bf16_steps():
    from fastgen.data import shapes_edges_dataset
    from fastgen.gan import Pix2PixTraining, StyleGANTraining
    from fastgen.models import Discriminator, Generator, PatchGANDiscriminator, UNetGenerator

    torch.manual_seed(0)
    sg = StyleGANTraining(Generator.from_preset("tiny", c_dim=4), Discriminator.from_preset("tiny", c_dim=4),
                          batch_size=4, r1_interval=1, pl_interval=1, bf16=True)
    out = sg.step(torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 3]))
    assert {"g", "pl", "d", "r1"} <= out.keys() and all(torch.isfinite(v) for v in out.values())
    p2p = Pix2PixTraining(UNetGenerator(in_channels=1, out_channels=1, img_resolution=16, base_channels=4),
                          PatchGANDiscriminator(in_channels=2, base_channels=4, n_layers=1), batch_size=2, bf16=True)
    data = shapes_edges_dataset(16, 2)
    out = p2p.step(torch.stack([data[0][0], data[1][0]]))
    assert all(torch.isfinite(v) for v in out.values())
