"""fastgen.models.vae: the posterior against torch.distributions, the loss against a hand-written
reference, fused vs reference gradients, shapes, the IWAE bound's properties, bits/dim, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import fastgen
import fastgen.models.vae as vae_mod
from fastgen.data import make_shapes
from fastgen.functional import reparameterize
from fastgen.models.vae import PRESETS, VAE, DiagonalGaussian, standard_normal_log_prob

D64 = torch.float64
# a smaller network than the "tiny" preset for the statistical tests (many decoder passes)
MINI = dict(image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=2,
            attention=False, num_groups=4)


def _images(n=4, size=16, seed=0):
    return make_shapes(size, n, seed=seed)[0]


def _randomise(m, seed=1, scale=0.05):
    """Non-trivial weights everywhere (zero-initialised layers would hide parts of the network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 0:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return m


# ----------------------------------------------------------------------------- the posterior
def test_diagonal_gaussian_matches_torch_distributions_float64():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 5, 5, generator=g, dtype=D64)
    logvar = torch.randn(3, 4, 5, 5, generator=g, dtype=D64) * 1.5
    z = torch.randn(3, 4, 5, 5, generator=g, dtype=D64)
    q = DiagonalGaussian(mean, logvar)
    ref = Normal(mean, torch.exp(0.5 * logvar))
    prior = Normal(torch.zeros_like(mean), torch.ones_like(mean))
    assert q.kl().dtype == D64 and q.kl().shape == (3,)
    torch.testing.assert_close(q.kl(), kl_divergence(ref, prior).flatten(1).sum(1), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z).flatten(1).sum(1), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(standard_normal_log_prob(z), prior.log_prob(z).flatten(1).sum(1), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(q.std, ref.stddev)
    torch.testing.assert_close(q.var, ref.variance)
    assert torch.equal(q.mode(), mean)
    # the fused sample + KL (float64 runs the reference) with a given eps
    s, kl = q.rsample_with_kl(noise=z)
    torch.testing.assert_close(s, mean + ref.stddev * z)
    torch.testing.assert_close(kl, q.kl())
    # from_moments splits channels; logvar is clamped to [-30, 20]
    m2 = DiagonalGaussian.from_moments(torch.cat([mean, torch.full_like(mean, 50.0)], 1))
    assert torch.equal(m2.mean, mean) and float(m2.logvar.max()) == 20.0
    with pytest.raises(ValueError, match="differ"):
        DiagonalGaussian(mean, logvar[:, :2])


# ----------------------------------------------------------------------------- the loss
def _reference_loss(vae, x, noise, beta):
    """The negative beta-ELBO written out by hand (per-sample sums, batch means)."""
    moments = vae.encoder(x)
    mu, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    z = mu + torch.exp(0.5 * logvar) * noise
    d = vae.decoder(z)
    if vae.likelihood == "gaussian":
        s = vae.log_sigma_x
        nll = (0.5 * (x - d) ** 2 / torch.exp(2 * s) + s + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    else:
        t = (x + 1) / 2
        nll = -(t * F.logsigmoid(d) + (1 - t) * F.logsigmoid(-d)).flatten(1).sum(1)
    kl = (0.5 * (mu ** 2 + torch.exp(logvar) - 1 - logvar)).flatten(1).sum(1)
    return nll.mean() + beta * kl.mean(), nll.mean(), kl.mean(), d


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_loss_matches_hand_written_reference(likelihood):
    torch.manual_seed(0)
    vae = _randomise(VAE.from_preset("tiny", likelihood=likelihood, beta=0.5))
    x = _images(3)
    noise = torch.randn((3,) + vae.latent_shape, generator=torch.Generator().manual_seed(2))
    out = vae.loss(x, noise=noise)
    loss, nll, kl, d = _reference_loss(vae, x, noise, 0.5)
    torch.testing.assert_close(out.nll, nll, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.kl, kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.elbo, -(nll + kl), rtol=1e-5, atol=1e-3)
    mean_img = d if likelihood == "gaussian" else 2 * torch.sigmoid(d) - 1
    torch.testing.assert_close(out.recon, mean_img, rtol=1e-5, atol=1e-5)
    # beta= overrides the model's beta; the ELBO does not depend on it
    out2 = vae.loss(x, noise=noise, beta=2.0)
    torch.testing.assert_close(out2.loss, nll + 2.0 * kl, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out2.elbo, out.elbo)


def _grads(vae, x, noise):
    vae.zero_grad(set_to_none=True)
    out = vae.loss(x, noise=noise)
    out.loss.backward()
    return out.loss.detach(), {k: p.grad.clone() for k, p in vae.named_parameters()}


def _assert_grads_close(got, want, rel, what):
    """Per parameter tensor, ``||got - want|| <= rel ||want||``: element-wise tolerances do not fit
    weight gradients that are sums of many cancelling terms (fp32 rounding alone moves single
    elements by 0.2% relative there, in the fused and in the reference path alike)."""
    for k in want:
        err = float((got[k].double() - want[k].double()).norm())
        assert err <= rel * float(want[k].double().norm()) + 1e-12, (what, k, err, float(want[k].norm()))


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_reparameterised_gradients_match_the_reference_op(likelihood, monkeypatch):
    """Gradients through the whole model: the fused reparameterisation vs the reference op (alone,
    everything else fixed), the whole model on fused ops vs on plain PyTorch ops, and both vs the
    same model in float64 (measured: ~3e-6 relative for every parameter, fused and reference alike)."""
    torch.manual_seed(0)
    vae = _randomise(VAE.from_preset("tiny", likelihood=likelihood))
    x = _images(3)
    noise = torch.randn((3,) + vae.latent_shape, generator=torch.Generator().manual_seed(2))
    loss_f, g_f = _grads(vae, x, noise)
    # 1) only the reparameterisation swapped for the reference
    with monkeypatch.context() as mp:
        mp.setattr(vae_mod, "reparameterize", lambda *a, **k: reparameterize(*a, impl="torch", **k))
        loss_r, g_r = _grads(vae, x, noise)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-6, atol=1e-4)
    _assert_grads_close(g_f, g_r, 1e-4, "fused vs reference reparameterize")
    # 2) the whole model on the reference ops (GroupNorm+SiLU, attention, reparameterisation)
    with fastgen.use_backend("torch"):
        loss_t, g_t = _grads(vae, x, noise)
    torch.testing.assert_close(loss_f, loss_t, rtol=1e-5, atol=1e-2)
    _assert_grads_close(g_f, g_t, 1e-4, "fused vs torch backend")
    # 3) float64 (the reference op runs in float64)
    vae.double()
    loss_d, g_d = _grads(vae, x.double(), noise.double())
    torch.testing.assert_close(loss_f.double(), loss_d, rtol=1e-5, atol=1e-2)
    _assert_grads_close(g_f, g_d, 1e-4, "fused fp32 vs float64")
    # the encoder gets gradient through the sample
    assert float(g_f["encoder.conv_out.weight"].abs().sum()) > 0


def test_in_kernel_noise_equals_reference_with_the_same_seed():
    """Without noise=, z uses fastgen's Philox stream; the reference backend draws the same eps."""
    torch.manual_seed(0)
    vae = _randomise(VAE.from_preset("tiny"))
    x = _images(2)
    a = vae(x, generator=torch.Generator().manual_seed(5))
    with fastgen.use_backend("torch"):
        b = vae(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a.z, b.z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.kl, b.kl, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- shapes
def test_shapes_of_the_tiny_preset_and_latent_shape():
    torch.manual_seed(0)
    vae = VAE.from_preset("tiny")
    assert vae.latent_shape == (4, 8, 8) and vae.downsample_factor == 2
    x = _images(3)
    post = vae.encode(x)
    assert post.mean.shape == post.logvar.shape == (3,) + vae.latent_shape
    assert post.sample().shape == (3,) + vae.latent_shape
    assert vae.decode(post.mean).shape == x.shape
    assert vae.reconstruct(x).shape == x.shape
    s = vae.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 3, 16, 16) and not s.requires_grad
    assert torch.equal(s, vae.sample(5, generator=torch.Generator().manual_seed(0)))
    assert vae(x).recon.shape == x.shape
    assert vae.decode(torch.zeros(1, 4, 4, 4)).shape == (1, 3, 8, 8)  # fully convolutional
    # Bernoulli: the mean image is in [-1, 1]
    b = _randomise(VAE.from_preset("tiny", likelihood="bernoulli"), scale=1.0)
    r = b.reconstruct(x)
    assert float(r.min()) >= -1 and float(r.max()) <= 1
    # the presets' latent shapes (config arithmetic; the big ones are not built here)
    lat = {n: (c["latent_channels"], c["image_size"] // 2 ** (len(c["channel_mult"]) - 1)) for n, c in PRESETS.items()}
    assert lat == {"tiny": (4, 8), "shapes32": (4, 8), "kl-f4": (3, 16), "kl-f8": (4, 32)}
    assert VAE.from_preset("shapes32").latent_shape == (4, 8, 8)
    g = VAE.from_preset("tiny", in_channels=1)
    assert g.encode(torch.zeros(2, 1, 16, 16)).mean.shape == (2, 4, 8, 8)


# ----------------------------------------------------------------------------- IWAE
@pytest.fixture(scope="module")
def trained_mini():
    """A small VAE trained for a few steps on 8px shapes (so the bounds are not those of noise)."""
    torch.manual_seed(0)
    vae = VAE(**MINI)
    x = _images(32, size=8)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for i in range(25):
        out = vae.loss(x[(i % 2) * 16:(i % 2) * 16 + 16], generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return vae.eval(), x[:16]


def test_iwae_k1_is_the_elbo_in_expectation(trained_mini):
    """With the same generator seed, IWAE(k=1) and the ELBO use the same z and differ by
    log p(z) - log q(z) + KL, whose expectation is 0: the mean difference over 16 images x 24
    draws is within 5 standard errors of 0."""
    vae, x = trained_mini
    diffs = torch.stack([vae.iwae_log_likelihood(x, k=1, generator=torch.Generator().manual_seed(s))
                         - vae.elbo(x, generator=torch.Generator().manual_seed(s)) for s in range(24)])
    se = float(diffs.std()) / diffs.numel() ** 0.5
    assert abs(float(diffs.mean())) < 5 * se + 1e-3, (float(diffs.mean()), se)


def test_iwae_bound_tightens_with_k(trained_mini):
    """Per image, the IWAE bound averaged over a few draws increases from k=1 to 8 to 64 and k=64
    is above the ELBO. The per-image gains are heavy-tailed (a few images gain 5x the median), so
    the test is a sign test: at least 13 of the 16 images gain (p = 0.002 if gains were coin flips;
    measured: all 16, for each pair), and the mean gain is positive."""
    vae, x = trained_mini

    def bound(k, reps):
        return torch.stack([vae.iwae_log_likelihood(x, k=k, generator=torch.Generator().manual_seed(100 * k + s))
                            for s in range(reps)]).mean(0)

    elbo = torch.stack([vae.elbo(x, generator=torch.Generator().manual_seed(7 + s)) for s in range(16)]).mean(0)
    b1, b8, b64 = bound(1, 16), bound(8, 4), bound(64, 2)
    for lo, hi, what in ((elbo, b64, "ELBO < IWAE64"), (b1, b8, "IWAE1 < IWAE8"), (b8, b64, "IWAE8 < IWAE64")):
        d = hi - lo
        assert int((d > 0).sum()) >= 13 and float(d.mean()) > 0, (what, d.tolist())
    assert b64.shape == (16,) and torch.isfinite(b64).all()
    # K not a multiple of chunk: 4 + 2 samples, still one value per image
    a = vae.iwae_log_likelihood(x[:2], k=6, chunk=4, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2,) and torch.isfinite(a).all()


def test_bits_per_dim_arithmetic():
    torch.manual_seed(0)
    x = torch.zeros(2, 3, 16, 16)
    D = 3 * 16 * 16
    g = VAE.from_preset("tiny")
    # 8 bits/dim of 8-bit pixels = a density of x in [-1, 1] of D (log 127.5 - 8 log 2)
    ll = torch.full((2,), D * (math.log(127.5) - 8 * math.log(2)), dtype=D64)
    torch.testing.assert_close(g.bits_per_dim(ll, x), torch.full((2,), 8.0, dtype=D64))
    b = VAE.from_preset("tiny", likelihood="bernoulli")
    torch.testing.assert_close(b.bits_per_dim(torch.tensor([-D * math.log(2)]), x), torch.tensor([1.0]))
    torch.testing.assert_close(b.bits_per_dim(torch.tensor([0.0]), x), torch.tensor([0.0]))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(likelihood="laplace"), "likelihood"),
    (dict(beta=-1.0), "beta"),
    (dict(beta=float("nan")), "beta"),
    (dict(beta=True), "beta"),
    (dict(sigma_x=0.0), "sigma_x"),
    (dict(image_size=17), "image_size"),
    (dict(image_size=0), "image_size"),
    (dict(in_channels=0), "in_channels"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(latent_channels=1.5), "latent_channels"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE.from_preset("tiny", **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="preset"):
        VAE.from_preset("kl-f16")
    vae = VAE.from_preset("tiny")
    with pytest.raises(ValueError, match=r"x must be \(N, 3, H, W\)"):
        vae.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="x must be"):
        vae.loss(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="divisible by 2"):
        vae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(TypeError, match="x must be a tensor"):
        vae.encode([1, 2])
    with pytest.raises(ValueError, match="z must be"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="n must be"):
        vae.sample(0)
    with pytest.raises(ValueError, match="k must be"):
        vae.iwae_log_likelihood(torch.zeros(1, 3, 16, 16), k=0)
    with pytest.raises(ValueError, match="noise"):
        vae.loss(torch.zeros(2, 3, 16, 16), noise=torch.zeros(2, 4, 4, 4))
