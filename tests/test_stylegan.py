"""StyleGAN: resampling / modulated convolutions, the building blocks, the generator and
discriminator (both styles and architectures), the losses, and the training recipe."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen.functional import setup_filter, upfirdn2d
from fastgen.gan import PathLengthPenalty, StyleGANTraining, d_logistic_loss, g_nonsaturating_loss, r1_penalty
from fastgen.models import Discriminator, Generator
from fastgen.nn.stylegan import (EqualizedConv2d, EqualizedLinear, MappingNetwork, MinibatchStdDev, SynthesisLayer,
                                 normalize_2nd_moment)
from fastgen.ops.modulated_conv2d import conv2d_resample, demodulation_coefficients, modulated_conv2d

D64 = torch.float64


# ----------------------------------------------------------------------------- conv2d_resample
def _pads(f_len, k, up=1, down=1):
    p = k // 2
    if up > 1:
        return [p + (f_len + up - 1) // 2, p + (f_len - up) // 2] * 2
    return [p + (f_len - down + 1) // 2, p + (f_len - down) // 2] * 2


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("up", [2, 3])
@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1, 1]])
def test_conv2d_resample_up_is_filter_then_conv_at_high_resolution(k, up, taps):
    """The transposed-conv route equals its definition: zero-insert, pad once, FIR (gain up^2), conv."""
    f = setup_filter(taps).double()
    x, w = torch.randn(2, 4, 7, 6, dtype=D64), torch.randn(5, 4, k, k, dtype=D64)
    got = conv2d_resample(x, w, f, up=up, padding=k // 2)
    p = _pads(len(taps), k, up=up)
    want = F.conv2d(upfirdn2d(x, f, up=up, padding=[p[0], p[1], p[0], p[1]], gain=up * up), w)
    assert got.shape == (2, 5, 7 * up, 6 * up)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_conv2d_resample_down_is_filter_then_strided_conv(k):
    f = setup_filter([1, 3, 3, 1]).double()
    x, w = torch.randn(2, 4, 8, 10, dtype=D64), torch.randn(5, 4, k, k, dtype=D64)
    got = conv2d_resample(x, w, f, down=2, padding=k // 2)
    p = _pads(4, k, down=2)
    full = F.conv2d(upfirdn2d(x, f, padding=[p[0], p[1], p[0], p[1]]), w)  # every output, then keep the even ones
    assert got.shape == (2, 5, 4, 5)
    torch.testing.assert_close(got, full[:, :, ::2, ::2], rtol=1e-12, atol=1e-12)


def test_conv2d_resample_grouped_and_plain():
    f = setup_filter([1, 3, 3, 1]).double()
    x, w = torch.randn(2, 4, 6, 6, dtype=D64), torch.randn(6, 2, 3, 3, dtype=D64)
    got = conv2d_resample(x, w, f, up=2, padding=1, groups=2)
    want = torch.cat([conv2d_resample(x[:, :2], w[:3], f, up=2, padding=1),
                      conv2d_resample(x[:, 2:], w[3:], f, up=2, padding=1)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv2d_resample(x, w, None, padding=1, groups=2), F.conv2d(x, w, padding=1, groups=2))
    torch.testing.assert_close(conv2d_resample(x, w, None, padding=(1, 0, 2, 1), groups=2),
                               F.conv2d(F.pad(x, [1, 0, 2, 1]), w, groups=2))


def test_conv2d_resample_bad_input():
    x, w = torch.randn(1, 4, 8, 8), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="x must be"):
        conv2d_resample(torch.randn(1, 3, 8, 8), w)
    with pytest.raises(ValueError, match="w must be"):
        conv2d_resample(x, torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="both"):
        conv2d_resample(x, w, setup_filter([1, 1]), up=2, down=2)


# ----------------------------------------------------------------------------- modulated conv
@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_matches_per_sample_weights(up, demodulate):
    f = setup_filter([1, 3, 3, 1]).double()
    x, w, s = torch.randn(3, 4, 8, 8, dtype=D64), torch.randn(5, 4, 3, 3, dtype=D64), torch.randn(3, 4, dtype=D64)
    wm = w[None] * s[:, None, :, None, None]
    if demodulate:
        wm = wm * (wm.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    want = torch.cat([conv2d_resample(x[i:i + 1], wm[i], f, up=up, padding=1) for i in range(3)])
    for fused in (False, True):
        got = modulated_conv2d(x, w, s, demodulate=demodulate, up=up, padding=1, resample_filter=f,
                               fused_modconv=fused)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if demodulate:  # each output channel's modulated weights have unit norm
        d = demodulation_coefficients(w, s, eps=0.0)
        norms = (w[None] * s[:, None, :, None, None] * d[:, :, None, None, None]).square().sum(dim=[2, 3, 4])
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_modulated_conv2d_bad_input():
    with pytest.raises(ValueError, match="styles must be"):
        modulated_conv2d(torch.randn(2, 4, 8, 8), torch.randn(5, 4, 3, 3), torch.randn(3, 4))


# ----------------------------------------------------------------------------- layers
def test_equalized_linear_and_conv_scale_weights_at_run_time():
    lin = EqualizedLinear(16, 8, act="linear", lr_multiplier=0.1, bias_init=0.5)
    x = torch.randn(4, 16)
    w = lin.weight * 0.1 / 4.0
    torch.testing.assert_close(lin(x), x @ w.t() + 0.5, rtol=1e-5, atol=1e-6)
    assert torch.allclose(lin.bias * lin.bias_gain, torch.full((8,), 0.5))
    lrelu = EqualizedLinear(16, 8, act="lrelu")
    torch.testing.assert_close(lrelu(x), F.leaky_relu(x @ (lrelu.weight / 4.0).t(), 0.2) * math.sqrt(2),
                               rtol=1e-5, atol=1e-6)
    conv = EqualizedConv2d(4, 6, 3, act="lrelu", conv_clamp=0.5)
    with torch.no_grad():
        conv.bias.normal_()
    xi = torch.randn(2, 4, 8, 8)
    want = (F.leaky_relu(F.conv2d(xi, conv.weight / 6.0, conv.bias, padding=1), 0.2) * math.sqrt(2) * 2).clamp(-1, 1)
    torch.testing.assert_close(conv(xi, gain=2.0), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="in_features"):
        EqualizedLinear(0, 4)
    with pytest.raises(ValueError, match="act"):
        EqualizedConv2d(4, 4, 3, act="nope")


def test_mapping_network_truncation_labels_and_w_avg():
    torch.manual_seed(0)
    m = MappingNetwork(8, 3, 16, num_ws=5, num_layers=3)
    z = torch.randn(4, 8)
    c = torch.tensor([0, 2, 1, 2])
    ws = m(z, c)
    assert ws.shape == (4, 5, 16) and torch.equal(ws[:, 0], ws[:, 4])
    torch.testing.assert_close(m(z, F.one_hot(c, 3).float()), ws)  # indices == one-hot
    assert torch.count_nonzero(m.w_avg) == 0
    m(z, c, update_w_avg=True)
    torch.testing.assert_close(m.w_avg, 0.005 * ws[:, 0].mean(0))
    torch.testing.assert_close(m(z, c, truncation_psi=0.0), m.w_avg.expand(4, 5, 16))
    cut = m(z, c, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, 2:], ws[:, 2:])
    torch.testing.assert_close(cut[:, :2], m.w_avg.lerp(ws[:, :2], 0.5))
    with pytest.raises(ValueError, match="conditional"):
        m(z)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        m(z, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="z must be"):
        m(torch.randn(4, 7), c)
    with pytest.raises(ValueError, match="unconditional"):
        MappingNetwork(8, 0, 16, None)(z, c)


def test_normalize_2nd_moment():
    x = torch.randn(5, 7) * 3
    assert torch.allclose(normalize_2nd_moment(x).square().mean(1), torch.ones(5), atol=1e-5)


def test_minibatch_stddev_formula_and_groups():
    x = torch.randn(8, 6, 4, 4, dtype=D64)
    y = MinibatchStdDev(group_size=4, num_channels=2)(x)
    assert y.shape == (8, 8, 4, 4) and torch.equal(y[:, :6], x)
    for j in range(2):  # groups are samples {j, j + 2, j + 4, j + 6}
        grp = x[j::2]
        sd = (grp.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (6, 4, 4)
        want = torch.stack([sd[:3].mean(), sd[3:].mean()])
        for k in range(4):
            torch.testing.assert_close(y[j + 2 * k, 6:, 0, 0], want)
    assert MinibatchStdDev(4)(torch.randn(6, 3, 2, 2)).shape == (6, 4, 2, 2)  # group of 3 divides 6
    assert MinibatchStdDev(4)(torch.randn(5, 3, 2, 2)).shape == (5, 4, 2, 2)  # prime batch: group size 1
    with pytest.raises(ValueError, match="divisible"):
        MinibatchStdDev(4, num_channels=2)(torch.randn(4, 3, 2, 2))


def test_synthesis_layer_noise_modes_and_fused_modconv():
    torch.manual_seed(0)
    layer = SynthesisLayer(4, 6, 8, resolution=16, up=2, conv_clamp=256)
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 8)
    a = layer(x, w, noise_mode="const")
    assert a.shape == (2, 6, 16, 16)
    torch.testing.assert_close(layer(x, w, noise_mode="const", fused_modconv=True), a, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(layer(x, w), layer(x, w))  # random noise differs per call
    with torch.no_grad():
        layer.noise_strength.zero_()
    torch.testing.assert_close(layer(x, w, noise_mode="none"), layer(x, w, noise_mode="random"))
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, w, noise_mode="fixed")


# ----------------------------------------------------------------------------- generator / discriminator
GENERATORS = [dict(style="stylegan2", architecture="skip"), dict(style="stylegan2", architecture="resnet"),
              dict(style="stylegan2", architecture="orig"), dict(style="stylegan")]


@pytest.mark.parametrize("cfg", GENERATORS, ids=lambda c: "-".join(c.values()))
def test_generator_shapes_determinism_and_truncation(cfg):
    torch.manual_seed(0)
    G = Generator.from_preset("tiny", c_dim=3, **cfg)
    z, c = torch.randn(4, 64), torch.tensor([0, 1, 2, 0])
    img, ws = G(z, c, return_ws=True)
    assert img.shape == (4, 3, 16, 16) and ws.shape == (4, G.num_ws, 64)
    assert torch.isfinite(img).all()
    # same w and fixed noise -> same image; psi = 0 -> every sample is the mean image
    torch.testing.assert_close(G(z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    mean_img = G(z, c, truncation_psi=0.0, noise_mode="const")
    torch.testing.assert_close(mean_img, mean_img[:1].expand_as(mean_img))
    # (batch 1 vs 4 runs the convolutions in another order; AdaIN of the near-constant early maps
    # amplifies that rounding, hence 1e-3)
    torch.testing.assert_close(mean_img[0:1], G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, 64), noise_mode="const"),
                               rtol=1e-3, atol=1e-3)


def test_generator_num_ws_and_style_mixing():
    G = Generator.from_preset("tiny")  # 16 px: blocks 4, 8, 16 -> 1 + 2 + 2 convs + the last to-RGB
    assert G.num_ws == 6
    z, z2 = torch.randn(2, 64), torch.randn(2, 64)
    ws = G.mapping(z)
    assert torch.equal(G.mix_styles(ws, z2, None, prob=0.0), ws)
    mixed = G.mix_styles(ws, z2, None, prob=1.0, generator=torch.Generator().manual_seed(1))
    ws2 = G.mapping(z2)
    k = int((mixed[0] == ws[0]).all(dim=1).sum())  # the first k layers keep z's ws, the rest are z2's
    assert 1 <= k < G.num_ws
    torch.testing.assert_close(mixed[:, k:], ws2[:, k:])
    # every block's to-RGB shares its w with the next block's first conv
    assert Generator.from_preset("tiny", architecture="orig").num_ws == 6


@pytest.mark.parametrize("arch", ["resnet", "orig"])
def test_discriminator_shapes_conditioning_and_errors(arch):
    D = Discriminator.from_preset("tiny", c_dim=3, architecture=arch)
    img = torch.randn(4, 3, 16, 16)
    out = D(img, torch.tensor([0, 1, 2, 1]))
    assert out.shape == (4, 1) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="img must be"):
        D(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="conditional"):
        D(img)
    with pytest.raises(ValueError, match="unconditional"):
        Discriminator.from_preset("tiny")(img, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(img_resolution=24)
    with pytest.raises(ValueError, match="preset"):
        Discriminator.from_preset("1024px")


def test_preset_sizes():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(Generator.from_preset("tiny")) < 3e5 and n(Discriminator.from_preset("tiny")) < 3e5
    G = Generator(img_resolution=256)  # StyleGAN2 config F: ~30M generator, ~29M discriminator
    assert 29e6 < n(G) < 31e6 and G.num_ws == 14
    assert 28e6 < n(Discriminator(img_resolution=256)) < 30e6


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("noise_strength") or name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("style", ["stylegan2", "stylegan"])
def test_fused_backends_equal_reference_generator_and_r1_through_discriminator(style):
    """G forward/backward, D forward and the R1 penalty's gradients (a second derivative through
    every D op) on fastgen's default kernels (fp32) agree with the reference ops run in float64
    (``use_backend("torch")`` on a float64 copy; the fp32 reference itself is less accurate than
    the fused kernels where AdaIN divides by small instance sigmas)."""
    torch.manual_seed(0)
    G = _randomise(Generator.from_preset("tiny", c_dim=3, style=style, conv_clamp=256), 1)
    D = _randomise(Discriminator.from_preset("tiny", c_dim=3, conv_clamp=256), 2)
    z, c = torch.randn(4, 64), torch.tensor([0, 1, 2, 1])

    def run(G, D, z):
        G.zero_grad()
        D.zero_grad()
        img = G(z, c, noise_mode="const")
        g_nonsaturating_loss(D(img, c)).mean().backward()
        real = img.detach().requires_grad_(True)
        r1 = r1_penalty(D(real, c), real).mean()
        r1.backward()
        grads = {f"G.{k}": p.grad.clone() for k, p in G.named_parameters() if p.grad is not None}
        grads.update({f"D.{k}": p.grad.clone() for k, p in D.named_parameters() if p.grad is not None})
        return img.detach(), r1.detach(), grads

    img_f, r1_f, g_f = run(G, D, z)
    with fastgen.use_backend("torch"):
        img_r, r1_r, g_r = run(copy.deepcopy(G).double(), copy.deepcopy(D).double(), z.double())
    # |img| reaches ~5 and the fp32 reference itself is ~3e-5 off float64 at the worst pixel
    torch.testing.assert_close(img_f.double(), img_r, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(r1_f.double(), r1_r, rtol=1e-4, atol=1e-8)
    assert g_f.keys() == g_r.keys() and len(g_f) == len(list(G.parameters())) + len(list(D.parameters()))
    # per tensor, relative to its norm; absolute against the network's whole gradient (a bias in
    # front of an instance norm has a gradient that is 0 up to rounding)
    total = {net: math.sqrt(sum(float(g.norm()) ** 2 for k, g in g_r.items() if k.startswith(net))) for net in "GD"}
    for k in g_f:
        err = float((g_f[k].double() - g_r[k]).norm())
        tol = 1e-4 * float(g_r[k].norm()) + 1e-5 * total[k[0]]
        assert err <= tol, f"{k}: |grad - ref| = {err:.3e}, |ref| = {g_r[k].norm():.3e}, |all| = {total[k[0]]:.3e}"


def test_r1_gradgradcheck_small_discriminator():
    """The R1 penalty's gradient w.r.t. D's weights is right (float64 gradcheck of grad-of-grad)."""
    torch.manual_seed(0)
    D = Discriminator(img_resolution=8, img_channels=1, channel_base=32, channel_max=4, mbstd_group_size=2).double()
    x = torch.randn(2, 1, 8, 8, dtype=D64, requires_grad=True)
    w = D.blocks[0].conv1.weight.detach().clone().requires_grad_(True)

    def r1(weight, inp):
        out = torch.func.functional_call(D, {"blocks.0.conv1.weight": weight}, (inp,))
        g, = torch.autograd.grad(out.sum(), inp, create_graph=True)
        return g.square().sum()

    assert torch.autograd.gradcheck(r1, (w, x), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- losses
def test_losses_match_formulas():
    r, f = torch.randn(6, 1), torch.randn(6, 1)
    torch.testing.assert_close(d_logistic_loss(r, f), -torch.log(torch.sigmoid(r)) - torch.log(1 - torch.sigmoid(f)))
    torch.testing.assert_close(g_nonsaturating_loss(f), -torch.log(torch.sigmoid(f)))
    x = torch.randn(3, 2, 4, 4, dtype=D64, requires_grad=True)
    logits = (x ** 3).sum(dim=[1, 2, 3])
    torch.testing.assert_close(r1_penalty(logits, x), (3 * x.detach() ** 2).square().sum(dim=[1, 2, 3]))
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(logits, x.detach())


def test_path_length_penalty_linear_map():
    """For img = ws @ A the path length is sqrt(mean_layers ||A y||^2) and pl_mean tracks its mean."""
    torch.manual_seed(0)
    ws = torch.randn(4, 3, 5, dtype=D64, requires_grad=True)
    A = torch.randn(5, 2 * 4 * 4, dtype=D64)
    img = (ws.sum(1) @ A).reshape(4, 2, 4, 4)
    pl = PathLengthPenalty(decay=0.5).double()
    gen = torch.Generator().manual_seed(3)
    pen = pl(img, ws, generator=gen)
    y = torch.randn(img.shape, generator=torch.Generator().manual_seed(3), dtype=D64) / 4.0
    lengths = (y.flatten(1) @ A.t()).square().sum(1).sqrt()  # same for each of the 3 layers
    torch.testing.assert_close(pl.pl_mean, 0.5 * lengths.mean())
    torch.testing.assert_close(pen, (lengths - 0.5 * lengths.mean()).square())


# ----------------------------------------------------------------------------- training
def _shapes_batch(data, idx):
    return torch.stack([data[int(i)][0] for i in idx]), torch.tensor([int(data[int(i)][1]) for i in idx])


def test_training_steps_with_r1_and_path_length_lower_the_losses():
    from fastgen.data import load_dataset

    torch.manual_seed(0)
    data = load_dataset("shapes", size=16)
    G = Generator.from_preset("tiny", c_dim=4)
    D = Discriminator.from_preset("tiny", c_dim=4)
    rec = StyleGANTraining(G, D, batch_size=16, r1_interval=4, pl_interval=2, ema_kimg=0.1)
    g = torch.Generator().manual_seed(0)
    hist = []
    for _ in range(24):
        out = rec.step(*_shapes_batch(data, torch.randint(0, len(data), (16,), generator=g)))
        assert all(torch.isfinite(v) for v in out.values()), out
        hist.append(out)
    first = {k: sum(float(h[k]) for h in hist[:4] if k in h) for k in ("d", "pl")}
    last = {k: sum(float(h[k]) for h in hist[-4:] if k in h) for k in ("d", "pl")}
    assert last["d"] < first["d"] and last["pl"] < first["pl"], (first, last)
    assert sum("r1" in h for h in hist) == 6 and sum("pl" in h for h in hist) == 12
    assert float(rec.pl.pl_mean) > 0 and torch.count_nonzero(G.mapping.w_avg) > 0
    # the EMA generator differs from G but is close to it, and samples finite images
    ema_p = dict(rec.G_ema.named_parameters())
    diffs = [float((p.detach() - ema_p[k]).abs().max()) for k, p in G.named_parameters()]
    assert max(diffs) > 0
    assert torch.isfinite(rec.G_ema(torch.randn(2, 64), torch.tensor([0, 3]))).all()


def test_training_resume_is_exact():
    from fastgen.data import load_dataset

    data = load_dataset("shapes", size=16)
    idx = torch.randint(0, len(data), (6, 8), generator=torch.Generator().manual_seed(0))

    def fresh():
        torch.manual_seed(0)
        G, D = Generator.from_preset("tiny", c_dim=4), Discriminator.from_preset("tiny", c_dim=4)
        return StyleGANTraining(G, D, batch_size=8, r1_interval=2, pl_interval=2,
                                generator=torch.Generator().manual_seed(5))

    a = fresh()
    for i in range(3):
        a.step(*_shapes_batch(data, idx[i]))
    state = copy.deepcopy(a.state_dict())
    rng = torch.get_rng_state()
    for i in range(3, 6):
        a.step(*_shapes_batch(data, idx[i]))
    b = fresh()
    b.load_state_dict(state)
    torch.set_rng_state(rng)
    for i in range(3, 6):
        b.step(*_shapes_batch(data, idx[i]))
    for (k, p), q in zip(a.G.state_dict().items(), b.G.state_dict().values()):
        assert torch.equal(p, q), k
    for (k, p), q in zip(a.D.state_dict().items(), b.D.state_dict().values()):
        assert torch.equal(p, q), k
    for (k, p), q in zip(a.G_ema.state_dict().items(), b.G_ema.state_dict().values()):
        assert torch.equal(p, q), k


def test_training_bad_arguments():
    G, D = Generator.from_preset("tiny", c_dim=4), Discriminator.from_preset("tiny", c_dim=4)
    with pytest.raises(ValueError, match="r1_interval"):
        StyleGANTraining(G, D, batch_size=4, r1_interval=0)
    with pytest.raises(ValueError, match="betas"):
        StyleGANTraining(G, D, batch_size=4, betas=(0.0, 1.0))
    with pytest.raises(TypeError, match="Generator"):
        StyleGANTraining(D, D, batch_size=4)
    rec = StyleGANTraining(G, D, batch_size=4)
    with pytest.raises(ValueError, match="labels"):
        rec.step(torch.randn(4, 3, 16, 16))
    with pytest.raises(ValueError, match="real must be"):
        rec.step(torch.randn(4, 16, 16), torch.zeros(4, dtype=torch.long))


def test_conditioning_transition_fades_labels_in():
    """cond_transition: before start every sample carries the uniform label (the labels cannot
    change anything), then lam * onehot + (1 - lam) / K with lam linear in kimg, then plain labels."""
    from fastgen.data import load_dataset

    data = load_dataset("shapes", size=16)
    x, y = _shapes_batch(data, torch.arange(8))

    def run(labels, transition, steps=2):
        torch.manual_seed(0)
        G, D = Generator.from_preset("tiny", c_dim=4), Discriminator.from_preset("tiny", c_dim=4)
        rec = StyleGANTraining(G, D, batch_size=8, r1_interval=2, pl_interval=2, cond_transition=transition,
                               generator=torch.Generator().manual_seed(3))
        torch.manual_seed(1)
        outs = [rec.step(x, labels) for _ in range(steps)]
        return rec, outs

    other = (y + 1) % 4
    # not started: the labels are invisible, so other labels give bit-identical training
    a, out_a = run(y, (1.0, 2.0))
    b, out_b = run(other, (1.0, 2.0))
    for oa, ob in zip(out_a, out_b):
        assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa), (oa, ob)
    assert all(torch.equal(p, q) for p, q in zip(a.G.parameters(), b.G.parameters()))
    # without a transition (or once it is over) the labels matter
    _, out_c = run(y, None)
    _, out_d = run(other, None)
    assert not all(torch.equal(out_c[0][k], out_d[0][k]) for k in ("d_real",))
    _, out_e = run(y, (0.0, 0.0))
    assert all(torch.equal(out_e[0][k], out_c[0][k]) for k in out_c[0])

    # the schedule and the soft labels
    rec = a
    assert rec.cond_strength == 0.0
    rec.num_images = 1500
    assert rec.cond_strength == pytest.approx(0.5)
    soft = rec._soft(torch.tensor([2, 0]))
    assert torch.allclose(soft, torch.tensor([[0.125, 0.125, 0.625, 0.125], [0.625, 0.125, 0.125, 0.125]]))
    rec.num_images = 2000
    assert rec.cond_strength == 1.0 and torch.equal(rec._soft(y), y)
    assert rec.config["cond_transition"] == [1.0, 2.0]
    # resume restores the images seen, hence lam
    fresh, _ = run(y, (1.0, 2.0), steps=0)
    fresh.load_state_dict(copy.deepcopy(rec.state_dict()))
    assert fresh.cond_strength == 1.0

    G, D = Generator.from_preset("tiny", c_dim=4), Discriminator.from_preset("tiny", c_dim=4)
    for bad, msg in (((2.0, 1.0), "start <= end"), ((1.0,), "start_kimg, end_kimg"), ("ab", "start_kimg"),
                     ((-1.0, 1.0), r"cond_transition\[0\]")):
        with pytest.raises(ValueError, match=msg):
            StyleGANTraining(G, D, batch_size=4, cond_transition=bad)
    G0, D0 = Generator.from_preset("tiny"), Discriminator.from_preset("tiny")
    with pytest.raises(ValueError, match="class-conditional"):
        StyleGANTraining(G0, D0, batch_size=4, cond_transition=(0.0, 1.0))
