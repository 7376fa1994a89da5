"""The GAN model zoo: DCGAN (cGAN / ACGAN / InfoGAN / WGAN critics / projection / SN / SAGAN),
pix2pix (U-Net generator, PatchGAN) and CycleGAN (ResNet generator, image pool).

Small channel counts throughout: these test wiring, shapes, conditioning, heads, gradient penalties
(double backward, gradcheck), fused-vs-reference agreement, receptive fields and checkpointing."""
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgen
from fastgen.gan import acgan_loss, d_loss, infogan_categorical_loss, infogan_continuous_loss, r1_penalty
from fastgen.models import (DCGAN_PRESETS, DCGANDiscriminator, DCGANGenerator, DiscriminatorOutput, ImagePool,
                            InfoCodes, PatchGANDiscriminator, ResnetGenerator, UNetGenerator)
from fastgen.nn import BiasAct, GroupNormAct, SelfAttention2d

D64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is faster, and much faster on a busy machine
    (OpenMP threads waiting on each other); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _finite_nonzero(t: torch.Tensor) -> bool:
    return t is not None and bool(torch.isfinite(t).all()) and bool(t.abs().sum() > 0)


def _first_conv_weight(model: nn.Module) -> torch.Tensor:
    conv = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    return conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight


def _gp_penalty(D, x, c=None):
    """WGAN-GP's (||grad_x D(x)|| - 1)^2 on the given inputs, differentiable (create_graph)."""
    out = D(x, c) if c is not None else D(x)
    logits = out.logits if isinstance(out, DiscriminatorOutput) else out
    g, = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return (g.flatten(1).norm(dim=1) - 1).square().mean()


# ============================================================================= DCGAN generator
@pytest.mark.parametrize("res", [8, 16, 32, 64])
@pytest.mark.parametrize("img_channels", [1, 3])
def test_dcgan_generator_shapes_range_backward(res, img_channels):
    G = DCGANGenerator(z_dim=8, img_resolution=res, img_channels=img_channels, base_channels=2)
    z = torch.randn(3, 8)
    x = G(z)
    assert x.shape == (3, img_channels, res, res)
    assert float(x.detach().abs().max()) <= 1.0
    x.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())
    # the channel plan: base * R / (2 r) at resolution r, a 4x4 projection first, Tanh last
    convs = [m.conv for m in G.layers]
    assert convs[0].in_channels == 8 and convs[0].out_channels == 2 * res // 8
    hidden = [8 * 2 ** i for i in range(len(convs) - 2)]  # resolutions 8, 16, ... R / 2
    assert [c.out_channels for c in convs[1:-1]] == [2 * res // (2 * r) for r in hidden]
    assert convs[-1].out_channels == img_channels and G.layers[-1].act.act == "tanh"
    assert len(convs) == res.bit_length() - 2  # log2(R) - 2 upsampling layers + the projection


def test_dcgan_generator_layers_follow_radford_rules():
    G = DCGANGenerator(z_dim=8, img_resolution=16, base_channels=4)
    for i, block in enumerate(G.layers):
        assert isinstance(block.conv, nn.ConvTranspose2d) and block.conv.bias is None
        assert block.conv.kernel_size == (4, 4) and block.conv.stride == ((1, 1) if i == 0 else (2, 2))
        last = i == len(G.layers) - 1
        assert (block.norm is None) == last and (last or isinstance(block.norm, nn.BatchNorm2d))
        assert block.act.act == ("tanh" if last else "relu") and block.act.gain == 1.0
    G2 = DCGANGenerator(z_dim=8, img_resolution=16, base_channels=4, norm="none")
    assert all(b.norm is None and b.act.bias is not None for b in G2.layers)  # bias fused into BiasAct


def test_dcgan_generator_conditional_labels():
    G = DCGANGenerator(z_dim=8, img_resolution=8, base_channels=4, c_dim=5).eval()
    z = torch.randn(4, 8)
    c = torch.tensor([0, 4, 2, 1])
    x = G(z, c)
    torch.testing.assert_close(G(z, F.one_hot(c, 5).float()), x)  # indices == one-hot
    assert not torch.allclose(G(z, (c + 1) % 5), x)                 # the label matters
    assert G.layers[0].conv.in_channels == 8 + 5
    with pytest.raises(ValueError, match="class-conditional"):
        G(z)
    with pytest.raises(ValueError, match=r"in \[0, 5\)"):
        G(z, torch.tensor([0, 5, 1, 1]))
    with pytest.raises(ValueError, match="shape"):
        G(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        DCGANGenerator(z_dim=8, img_resolution=8, base_channels=4)(z, c)


def test_dcgan_generator_infogan_codes():
    G = DCGANGenerator(z_dim=6, img_resolution=8, base_channels=4, info_cat_dims=(3, 4), info_cont_dim=2).eval()
    assert G.code_dim == 3 + 4 + 2 and G.layers[0].conv.in_channels == 6 + 9
    codes = G.sample_codes(5, generator=torch.Generator().manual_seed(1))
    again = G.sample_codes(5, generator=torch.Generator().manual_seed(1))
    assert isinstance(codes, InfoCodes) and codes.cat.shape == (5, 2) and codes.cont.shape == (5, 2)
    assert torch.equal(codes.cat, again.cat) and torch.equal(codes.cont, again.cont)
    assert (codes.cat[:, 0] < 3).all() and (codes.cat[:, 1] < 4).all() and codes.cont.abs().max() <= 1
    z = torch.randn(5, 6)
    x = G(z, codes=codes)
    encoded = torch.cat([F.one_hot(codes.cat[:, 0], 3), F.one_hot(codes.cat[:, 1], 4), codes.cont], dim=1).float()
    torch.testing.assert_close(G(z, codes=tuple(codes)), x)
    torch.testing.assert_close(G(z, codes=encoded), x)
    torch.testing.assert_close(G.encode_codes(codes, 5, torch.float32, z.device), encoded)
    assert not torch.allclose(G(z, codes=InfoCodes(codes.cat, -codes.cont)), x)
    with pytest.raises(ValueError, match="pass codes"):
        G(z)
    with pytest.raises(ValueError, match=r"codes.cat\[:, 0\] must be in \[0, 3\)"):
        G(z, codes=InfoCodes(torch.full((5, 2), 3), codes.cont))
    with pytest.raises(ValueError, match="codes.cont"):
        G(z, codes=InfoCodes(codes.cat, None))
    only_cont = DCGANGenerator(z_dim=6, img_resolution=8, base_channels=4, info_cont_dim=1)
    assert only_cont.sample_codes(2).cat is None
    with pytest.raises(ValueError, match="without them"):
        only_cont(z[:2], codes=InfoCodes(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1)))


# ============================================================================= DCGAN discriminator
@pytest.mark.parametrize("res", [8, 16, 32, 64])
@pytest.mark.parametrize("norm", ["batch", "layer", "instance", "none"])
def test_dcgan_discriminator_shapes_backward(res, norm):
    D = DCGANDiscriminator(img_resolution=res, img_channels=3, base_channels=2, norm=norm)
    x = torch.randn(4, 3, res, res)
    logits = D(x)
    assert logits.shape == (4, 1)
    logits.sum().backward()
    assert _finite_nonzero(_first_conv_weight(D).grad)
    convs = [m.conv for m in D.trunk if hasattr(m, "conv")]
    assert len(convs) == res.bit_length() - 3  # R -> 4
    assert [c.out_channels for c in convs] == [2 * 2 ** i for i in range(len(convs))]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.bias is None for c in convs)
    first = D.trunk[0]
    assert first.norm is None and first.act.bias is not None and first.act.act == "lrelu" and first.act.alpha == 0.2
    for block in D.trunk[1:]:
        assert (block.norm is None) == (norm == "none")
        assert (block.act.bias is None) == (norm != "none")  # the bias lives in the norm when there is one
    assert D.feature_dim == convs[-1].out_channels * 16


def test_dcgan_discriminator_projection_is_psi_plus_inner_product():
    D = DCGANDiscriminator(img_resolution=16, base_channels=4, c_dim=3, cond="projection", norm="none").eval()
    with torch.no_grad():
        D.embed.weight.normal_()
    x, c = torch.randn(5, 3, 16, 16), torch.tensor([0, 1, 2, 2, 0])
    phi = D.features(x, c)
    want = D.head(phi) + (D.embed.weight[c] * phi).sum(dim=1, keepdim=True)
    torch.testing.assert_close(D(x, c), want)
    torch.testing.assert_close(D(x, F.one_hot(c, 3).double().float()), want)  # one-hot == indices
    soft = torch.softmax(torch.randn(5, 3), dim=1)  # soft labels: the expected embedding
    torch.testing.assert_close(D(x, soft), D.head(phi) + ((soft @ D.embed.weight) * phi).sum(1, keepdim=True))
    with pytest.raises(ValueError, match="class-conditional"):
        D(x)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        D(x, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="unconditional"):
        DCGANDiscriminator(img_resolution=16, base_channels=4)(x, c)


def test_dcgan_discriminator_concat_conditioning():
    D = DCGANDiscriminator(img_resolution=8, base_channels=4, c_dim=4, cond="concat", norm="none").eval()
    assert D.trunk[0].conv.in_channels == 3 + 4 and D.embed is None
    x, c = torch.randn(3, 3, 8, 8), torch.tensor([0, 3, 1])
    out = D(x, c)
    torch.testing.assert_close(D(x, F.one_hot(c, 4).float()), out)
    assert not torch.allclose(D(x, (c + 1) % 4), out)
    # the same as feeding constant one-hot maps as extra image channels
    maps = F.one_hot(c, 4).float()[:, :, None, None].expand(-1, -1, 8, 8)
    phi = D.trunk(torch.cat([x, maps], dim=1)).flatten(1)
    torch.testing.assert_close(out, D.head(phi))


def test_dcgan_discriminator_acgan_and_infogan_heads():
    D = DCGANDiscriminator(img_resolution=16, base_channels=4, norm="layer", aux_classes=5, info_cat_dims=(3, 2),
                           info_cont_dim=4)
    x = torch.randn(6, 3, 16, 16)
    out = D(x)
    assert isinstance(out, DiscriminatorOutput)
    logits, class_logits, info_logits, mean, log_std = out  # unpacks
    assert logits.shape == (6, 1) and class_logits.shape == (6, 5)
    assert [t.shape for t in info_logits] == [(6, 3), (6, 2)] and mean.shape == log_std.shape == (6, 4)
    labels, cat, cont = torch.randint(5, (6,)), torch.randint(2, (6, 2)), torch.rand(6, 4) * 2 - 1
    loss = (d_loss("nonsaturating", logits, -logits) + acgan_loss(class_logits, labels)
            + infogan_categorical_loss(info_logits[0], cat[:, 0]) + infogan_categorical_loss(info_logits[1], cat[:, 1])
            + infogan_continuous_loss(mean, log_std, cont)).mean()
    loss.backward()
    for name in ("aux.weight", "q_hidden.weight", "q_out.weight", "head.weight"):
        assert _finite_nonzero(D.get_parameter(name).grad), name
    assert _finite_nonzero(_first_conv_weight(D).grad)
    # the heads share the trunk: the same phi(x) feeds all of them
    phi = D.features(x)
    torch.testing.assert_close(out.class_logits, D.aux(phi))
    # only some heads
    acgan = DCGANDiscriminator(img_resolution=8, base_channels=4, aux_classes=3)(torch.randn(2, 3, 8, 8))
    assert acgan.class_logits.shape == (2, 3) and acgan.info_logits == () and acgan.info_mean is None
    info = DCGANDiscriminator(img_resolution=8, base_channels=4, info_cont_dim=2)(torch.randn(2, 3, 8, 8))
    assert info.class_logits is None and info.info_logits == () and info.info_log_std.shape == (2, 2)


def test_dcgan_discriminator_sigmoid_output():
    kw = dict(img_resolution=8, base_channels=4, norm="none")
    D = DCGANDiscriminator(**kw)
    P = DCGANDiscriminator(out="sigmoid", **kw)
    P.load_state_dict(D.state_dict())
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(P(x), torch.sigmoid(D(x)))


def test_dcgan_discriminator_self_attention_and_minibatch_std():
    D = DCGANDiscriminator(img_resolution=32, base_channels=4, norm="none", self_attention_at=8, minibatch_std=True)
    kinds = [type(m).__name__ for m in D.trunk]
    assert kinds == ["ConvNormAct", "ConvNormAct", "SelfAttention2d", "ConvNormAct"]  # 16, 8 (+attn), 4
    sa = D.trunk[2]
    assert isinstance(sa, SelfAttention2d) and sa.value.in_channels == 8 and float(sa.gamma.detach()) == 0.0
    assert D.feature_dim == (16 + 1) * 16
    x = torch.randn(4, 3, 32, 32)
    base = D(x)
    with torch.no_grad():
        sa.gamma.fill_(1.0)
    assert not torch.allclose(D(x), base)  # the attention path is live
    # minibatch stddev: a sample's logit depends on the rest of its group
    y = x.clone()
    y[1:] = torch.randn(3, 3, 32, 32)
    assert not torch.allclose(D(y)[0], D(x)[0])
    plain = DCGANDiscriminator(img_resolution=32, base_channels=4, norm="none")
    assert torch.allclose(plain(y)[0], plain(x)[0])
    with pytest.raises(ValueError, match="self_attention_at"):
        DCGANDiscriminator(img_resolution=32, base_channels=4, self_attention_at=32)


def test_dcgan_discriminator_spectral_norm():
    D = DCGANDiscriminator(img_resolution=16, base_channels=4, norm="none", spectral_norm=True, c_dim=3)
    x, c = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    for _ in range(30):  # power iterations run in training-mode forwards
        D(x, c)
    for name in ("trunk.0.conv", "trunk.1.conv", "head", "embed"):
        m = D.get_submodule(name)
        assert hasattr(m, "parametrizations")
        w = m.weight.detach().flatten(1)
        assert abs(float(torch.linalg.matrix_norm(w, ord=2)) - 1.0) < 1e-2, name
    keys = D.state_dict().keys()
    assert "head.parametrizations.weight.original" in keys and "head.parametrizations.weight.0._u" in keys


def test_dcgan_init():
    torch.manual_seed(0)
    D = DCGANDiscriminator(img_resolution=16, base_channels=32, norm="batch")
    w = D.trunk[1].conv.weight
    assert abs(float(w.detach().std()) - 0.02) < 0.002 and abs(float(w.detach().mean())) < 0.002
    g = D.trunk[1].norm.weight
    assert abs(float(g.detach().mean()) - 1.0) < 0.01 and 0.005 < float(g.detach().std()) < 0.04
    assert float(D.trunk[0].act.bias.detach().abs().sum()) == 0.0 and float(D.head.bias.detach().abs().sum()) == 0.0
    default = DCGANDiscriminator(img_resolution=16, base_channels=32, norm="batch", init="default")
    assert float(default.trunk[1].norm.weight.detach().std()) == 0.0  # PyTorch's: ones
    lay = DCGANDiscriminator(img_resolution=16, base_channels=32, norm="layer")
    assert isinstance(lay.trunk[1].norm, GroupNormAct) and 0.005 < float(lay.trunk[1].norm.weight.detach().std()) < 0.04


def test_dcgan_presets():
    assert set(DCGAN_PRESETS) >= {"tiny", "32px", "64px"}
    G = DCGANGenerator.from_preset("tiny", c_dim=2)
    D = DCGANDiscriminator.from_preset("tiny", c_dim=2, norm="layer")
    assert G.img_resolution == D.img_resolution == 16
    x = G(torch.randn(2, 100), torch.tensor([0, 1]))
    assert D(x, torch.tensor([0, 1])).shape == (2, 1)
    assert DCGANGenerator.from_preset("64px").layers[0].conv.out_channels == 512  # dcgan.torch's 64px G
    with pytest.raises(ValueError, match="unknown preset"):
        DCGANGenerator.from_preset("mnist")


# ----------------------------------------------------------------------------- gradient penalties
PENALTY_CONFIGS = {
    "none": dict(norm="none"),
    "layer": dict(norm="layer"),
    "instance": dict(norm="instance"),
    "sngan-projection": dict(norm="none", spectral_norm=True, c_dim=3),
    "sagan-mbstd": dict(norm="layer", self_attention_at=8, minibatch_std=True),
    "acgan-infogan": dict(norm="layer", aux_classes=3, info_cat_dims=(2,), info_cont_dim=1, cond="concat", c_dim=3),
}


@pytest.mark.parametrize("name", list(PENALTY_CONFIGS))
def test_dcgan_discriminator_double_backward_r1_and_wgan_gp(name):
    D = DCGANDiscriminator(img_resolution=16, base_channels=4, **PENALTY_CONFIGS[name])
    c = torch.tensor([0, 1, 2, 1]) if D.c_dim else None
    real, fake = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    # R1 on reals
    x = real.clone().requires_grad_()
    out = D(x, c)
    logits = out.logits if isinstance(out, DiscriminatorOutput) else out
    r1 = r1_penalty(logits, x).mean()
    w = _first_conv_weight(D)
    gw, = torch.autograd.grad(r1, w)
    assert _finite_nonzero(gw)
    # WGAN-GP on interpolates
    eps = torch.rand(4, 1, 1, 1)
    gp = _gp_penalty(D, (eps * real + (1 - eps) * fake).requires_grad_(), c)
    D.zero_grad()
    gp.backward()
    assert _finite_nonzero(w.grad)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in D.parameters())


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_gradcheck_gradient_penalty_through_tiny_critic(norm):
    """The WGAN-GP penalty's gradient (a second derivative through the critic) w.r.t. the input and the
    weights of the first two layers, against finite differences, in float64. (With norm="none" the
    critic is piecewise linear in x, so the penalty's gradient w.r.t. x and the biases is exactly 0:
    gradcheck confirms those zeros as well.)"""
    torch.manual_seed(1)
    D = DCGANDiscriminator(img_resolution=16, img_channels=1, base_channels=2, norm=norm, init="default").double()
    with torch.no_grad():  # move the norm's affine and the biases away from their initial values
        for p in D.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    params = dict(D.named_parameters())
    names = ["trunk.0.conv.weight", "trunk.0.act.bias", "trunk.1.conv.weight"]
    names += ["trunk.1.norm.weight", "trunk.1.norm.bias"] if norm == "layer" else ["trunk.1.act.bias"]

    def penalty(x, *weights):
        logits = torch.func.functional_call(D, {**params, **dict(zip(names, weights))}, (x,))
        g, = torch.autograd.grad(logits.sum(), x, create_graph=True)
        return (g.flatten(1).norm(dim=1) - 1).square()

    x = torch.randn(1, 1, 16, 16, dtype=D64, requires_grad=True)
    weights = [params[n].detach().clone().requires_grad_() for n in names]
    grads = torch.autograd.grad(penalty(x, *weights).sum(), weights)
    assert _finite_nonzero(grads[0]) and _finite_nonzero(grads[2])
    assert torch.autograd.gradcheck(penalty, (x, *weights), eps=1e-6, atol=1e-8, rtol=1e-5)


FUSED_CONFIGS = {
    "none": dict(norm="none"),
    "layer-projection": dict(norm="layer", c_dim=3),
    "instance-sagan": dict(norm="instance", self_attention_at=8, spectral_norm=True),
    "heads": dict(norm="layer", aux_classes=3, info_cat_dims=(2,), info_cont_dim=1, minibatch_std=True),
}


@pytest.mark.parametrize("name", list(FUSED_CONFIGS))
def test_dcgan_discriminator_fused_equals_reference(name):
    """Outputs and R1 gradients (w.r.t. the input and every parameter) agree between the default
    (fused C++) backend and the plain-PyTorch references."""
    D = DCGANDiscriminator(img_resolution=16, base_channels=4, **FUSED_CONFIGS[name]).eval()
    with torch.no_grad():
        for m in D.modules():
            if isinstance(m, SelfAttention2d):
                m.gamma.fill_(0.7)
            if isinstance(m, (BiasAct, GroupNormAct)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    c = torch.tensor([0, 1, 2, 1]) if D.c_dim else None
    real = torch.randn(4, 3, 16, 16)

    def run():
        D.zero_grad()
        x = real.clone().requires_grad_()
        out = D(x, c)
        logits = out.logits if isinstance(out, DiscriminatorOutput) else out
        g, = torch.autograd.grad(logits.sum(), x, create_graph=True)
        (logits.mean() + g.square().sum()).backward()
        extra = [t for t in out[1:] if isinstance(t, torch.Tensor)] if isinstance(out, DiscriminatorOutput) else []
        return [logits.detach(), g.detach(), *[t.detach() for t in extra]], \
            {k: p.grad.clone() for k, p in D.named_parameters() if p.grad is not None}

    fused_out, fused_grads = run()
    with fastgen.use_backend("torch"):
        ref_out, ref_grads = run()
    for a, b in zip(fused_out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == ref_grads.keys() and len(fused_grads) > 3
    for k in fused_grads:
        torch.testing.assert_close(fused_grads[k], ref_grads[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_batchnorm_discriminator_warns_under_gradient_penalty():
    D = DCGANDiscriminator(img_resolution=8, base_channels=4, norm="batch")
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D(x)                                  # plain forward
        D(x * torch.ones(1, requires_grad=True))  # not a leaf: a generator's output
        D.eval()(x.clone().requires_grad_())  # eval: fixed statistics, penalties are fine
        DCGANDiscriminator(img_resolution=8, base_channels=4, norm="layer")(x.clone().requires_grad_())
    D.train()
    with pytest.warns(UserWarning, match="gradient penalty"):
        D(x.clone().requires_grad_())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D(x.clone().requires_grad_())  # once per module


# ============================================================================= pix2pix
@pytest.mark.parametrize("res", [16, 32, 64])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_generator_shapes_range_backward(res, norm):
    G = UNetGenerator(in_channels=2, out_channels=3, img_resolution=res, base_channels=2, max_channels=8, norm=norm)
    assert G.depth == res.bit_length() - 1 and len(G.down) == len(G.up) == G.depth
    x = torch.randn(2, 2, res, res)
    y = G(x)
    assert y.shape == (2, 3, res, res) and float(y.detach().abs().max()) <= 1.0
    y.mean().backward()
    assert _finite_nonzero(_first_conv_weight(G).grad)
    chans = [b.conv.out_channels for b in G.down]
    assert chans == [min(2 * 2 ** i, 8) for i in range(G.depth)]
    assert G.down[0].norm is None and G.down[-1].norm is None and all(b.norm is not None for b in G.down[1:-1])
    assert [b.dropout for b in G.up] == [0.5] * min(3, G.depth - 1) + [0.0] * (G.depth - min(3, G.depth - 1))
    # fully convolutional: a larger input of a multiple of img_resolution works
    assert G(torch.randn(1, 2, res, 2 * res)).shape == (1, 3, res, 2 * res)


def test_unet_generator_skip_connections():
    """Each decoder block (after the innermost) sees [previous decoder output, encoder output of the same
    resolution]; the last one sees the first encoder layer's full-resolution-derived features."""
    G = UNetGenerator(img_resolution=32, base_channels=2, max_channels=8, dropout=0.0).eval()
    seen = {}
    for i, m in enumerate(G.down):
        m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(("down", i), out))
    for j, m in enumerate(G.up):
        m.register_forward_hook(lambda mod, inp, out, j=j: seen.__setitem__(("up", j), inp[0]))
    x = torch.randn(1, 3, 32, 32)
    G(x)
    d = G.depth
    assert torch.equal(seen[("up", 0)], seen[("down", d - 1)])
    for j in range(1, d):
        enc = seen[("down", d - 1 - j)]
        assert torch.equal(seen[("up", j)][:, -enc.shape[1]:], enc)
    # the output at a pixel depends on a local change of the input there (through the outer skips)
    x2 = x.clone()
    x2[:, :, 16, 16] += 1.0
    with torch.no_grad():
        diff = (G(x2) - G(x)).abs().sum(dim=1)[0]
    assert float(diff[15:18, 15:18].sum()) > 0
    # cutting the outermost skip changes the output: it carries information
    with torch.no_grad():
        cut = G.up[-1].conv.weight.clone()
        cut[-G.down[0].conv.out_channels:] = 0
        ref = G(x)
        G.up[-1].conv.weight.copy_(cut)
        assert not torch.allclose(G(x), ref)


def test_unet_generator_dropout_at_eval():
    x = torch.randn(2, 3, 16, 16)
    G = UNetGenerator(img_resolution=16, base_channels=4, max_channels=16, norm="instance").eval()
    assert G.dropout_at_eval
    torch.manual_seed(1)
    a = G(x)
    torch.manual_seed(2)
    b = G(x)
    assert not torch.allclose(a, b)   # pix2pix's noise: dropout stays on in eval mode
    torch.manual_seed(1)
    torch.testing.assert_close(G(x), a)  # and follows the RNG
    G.dropout_at_eval = False
    assert G.config["dropout_at_eval"] is False
    torch.testing.assert_close(G(x), G(x))  # deterministic now
    G.train()
    assert not torch.allclose(G(x), G(x))   # training mode: dropout on
    off = UNetGenerator(img_resolution=16, base_channels=4, max_channels=16, norm="instance", dropout=0.0).eval()
    off.load_state_dict(G.state_dict())
    torch.testing.assert_close(off(x), G.eval()(x))  # dropout_at_eval=False == no dropout in eval mode


# ----------------------------------------------------------------------------- PatchGAN
@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patchgan_shapes(n_layers, norm):
    D = PatchGANDiscriminator(in_channels=6, base_channels=2, n_layers=n_layers, norm=norm)
    x, cond = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    y = D(x, condition=cond)
    side = D.output_size(64)
    assert y.shape == (2, 1, side, side) and side == 64 // 2 ** n_layers - 2
    torch.testing.assert_close(D(torch.cat([cond, x], dim=1)), y)
    chans = [m.conv.out_channels for m in D.layers]
    assert chans == [2 * min(2 ** i, 8) for i in range(n_layers + 1)]
    assert D.layers[0].norm is None
    y.mean().backward()
    assert _finite_nonzero(_first_conv_weight(D).grad)


@pytest.mark.parametrize("n_layers,expected", [(1, 16), (2, 34), (3, 70)])
def test_patchgan_receptive_field_by_backprop(n_layers, expected):
    """Backprop a one-hot gradient at one output logit and measure the input region it reaches."""
    D = PatchGANDiscriminator(in_channels=1, base_channels=2, n_layers=n_layers, norm="none").double()
    assert D.receptive_field == PatchGANDiscriminator.receptive_field_of(n_layers) == expected
    x = torch.randn(1, 1, 128, 128, dtype=D64, requires_grad=True)
    y = D(x)
    i, j = y.shape[2] // 2, y.shape[3] // 2
    g, = torch.autograd.grad(y[0, 0, i, j], x)
    rows = g[0, 0].abs().sum(dim=1).nonzero().flatten()
    cols = g[0, 0].abs().sum(dim=0).nonzero().flatten()
    assert 0 < int(rows[0]) and int(rows[-1]) < 127  # not clipped by the border
    assert int(rows[-1] - rows[0]) + 1 == expected and int(cols[-1] - cols[0]) + 1 == expected
    # and every input pixel of that square contributes
    assert int((g[0, 0] != 0).sum()) == expected ** 2


def test_patchgan_receptive_field_70_with_batchnorm_in_eval_mode():
    D = PatchGANDiscriminator(in_channels=3, base_channels=2, norm="batch").eval()
    x = torch.randn(1, 3, 96, 96, requires_grad=True)
    y = D(x)
    g, = torch.autograd.grad(y[0, 0, y.shape[2] // 2, y.shape[3] // 2], x)
    assert int((g[0].abs().sum(dim=0) != 0).sum()) == 70 * 70


def test_patchgan_batchnorm_warns_under_gradient_penalty():
    P = PatchGANDiscriminator(in_channels=3, base_channels=2, norm="batch")
    with pytest.warns(UserWarning, match="gradient penalty"):
        P(torch.randn(2, 3, 32, 32, requires_grad=True))


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_patchgan_double_backward(norm):
    D = PatchGANDiscriminator(in_channels=6, base_channels=2, norm=norm)
    x, cond = torch.rand(2, 3, 32, 32).requires_grad_(), torch.rand(2, 3, 32, 32)
    r1 = r1_penalty(D(x, condition=cond).flatten(1).mean(dim=1), x).mean()
    r1.backward()
    assert _finite_nonzero(_first_conv_weight(D).grad)


# ============================================================================= CycleGAN
@pytest.mark.parametrize("n_blocks", [6, 9])
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_resnet_generator_shapes_range_backward(n_blocks, norm):
    G = ResnetGenerator(in_channels=3, out_channels=1, base_channels=2, n_blocks=n_blocks, norm=norm)
    assert len(G.blocks) == n_blocks
    x = torch.randn(2, 3, 12, 16)
    y = G(x)
    assert y.shape == (2, 1, 12, 16) and float(y.detach().abs().max()) <= 1.0
    y.mean().backward()
    assert _finite_nonzero(_first_conv_weight(G).grad)
    assert G.stem.conv.kernel_size == (7, 7) and G.stem.conv.padding_mode == "reflect"
    assert G.blocks[0].conv1.conv.padding_mode == "reflect" and G.blocks[0].conv1.conv.in_channels == 8
    assert [m.conv.stride for m in G.down] == [(2, 2), (2, 2)]
    assert all(isinstance(m.conv, nn.ConvTranspose2d) for m in G.up) and G.head.act.act == "tanh"
    with pytest.raises(ValueError, match="multiples of 4"):
        G(torch.randn(1, 3, 14, 16))


def test_resnet_blocks_are_residual():
    G = ResnetGenerator(base_channels=2, n_blocks=1, norm="instance")
    block = G.blocks[0]
    with torch.no_grad():
        block.conv2.norm.weight.zero_()
        block.conv2.norm.bias.zero_()
    h = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(h), h)  # with the residual branch zeroed, the identity


# ----------------------------------------------------------------------------- ImagePool
def test_image_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(4)
    g = torch.Generator().manual_seed(0)
    first = torch.randn(3, 1, 2, 2)
    torch.testing.assert_close(pool.query(first, g), first)  # filling: returned as is and stored
    assert len(pool) == 3
    second = torch.randn(3, 1, 2, 2)
    out = pool.query(second, g)
    torch.testing.assert_close(out[0], second[0])  # fills the last slot
    assert len(pool) == 4
    stored_before = pool.images.clone()
    seen_new = seen_old = 0
    for _ in range(200):
        new = torch.randn(1, 1, 2, 2)
        before = pool.images.clone()
        got = pool.query(new, g)
        if torch.equal(got, new):
            seen_new += 1
            assert torch.equal(pool.images, before)
        else:
            seen_old += 1
            j = [k for k in range(4) if torch.equal(before[k], got[0])]
            assert len(j) == 1 and torch.equal(pool.images[j[0]], new[0])  # swapped in place
    assert 70 < seen_old < 130 and seen_new + seen_old == 200
    assert not torch.equal(pool.images, stored_before)


def test_image_pool_detaches_and_passthrough():
    x = torch.randn(2, 3, 4, 4, requires_grad=True) * 1
    assert not ImagePool(5).query(x).requires_grad
    torch.testing.assert_close(ImagePool(0).query(x), x.detach())
    assert len(ImagePool(0)) == 0


def test_image_pool_deterministic_and_state_round_trip(tmp_path):
    def run(pool, seed, steps=6):
        g = torch.Generator().manual_seed(seed)
        data = torch.Generator().manual_seed(100 + seed)
        return [pool.query(torch.randn(3, 2, 4, 4, generator=data), g) for _ in range(steps)]

    a, b = ImagePool(5), ImagePool(5)
    for u, v in zip(run(a, 1), run(b, 1)):
        assert torch.equal(u, v)
    assert torch.equal(a.images, b.images)

    state = a.state_dict()
    assert state["images"].shape == (5, 2, 4, 4) and int(state["size"]) == 5
    from safetensors.torch import load_file, save_file
    save_file(state, str(tmp_path / "pool.safetensors"))
    c = ImagePool(5)
    c.load_state_dict(load_file(str(tmp_path / "pool.safetensors")))
    assert torch.equal(c.images, a.images)
    for u, v in zip(run(a, 2), run(c, 2)):  # resumes exactly
        assert torch.equal(u, v)
    assert torch.equal(c.images, a.images)
    # an empty pool's state round-trips too
    empty = ImagePool(3).state_dict()
    save_file(empty, str(tmp_path / "empty.safetensors"))
    d = ImagePool(3)
    d.load_state_dict(load_file(str(tmp_path / "empty.safetensors")))
    assert len(d) == 0 and d.images is None
    with pytest.raises(ValueError, match="size 5"):
        ImagePool(3).load_state_dict(state)
    with pytest.raises(ValueError, match="pool holds"):
        a.query(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        a.query(torch.randn(3, 4, 4))


# ============================================================================= configs, arguments
def _models():
    return [
        DCGANGenerator(z_dim=8, img_resolution=16, base_channels=4, c_dim=3, info_cat_dims=(2,), info_cont_dim=1),
        DCGANDiscriminator(img_resolution=16, base_channels=4, c_dim=3, norm="layer", spectral_norm=True,
                           aux_classes=3, info_cat_dims=(2,), info_cont_dim=1, minibatch_std=True,
                           self_attention_at=8),
        DCGANDiscriminator(img_resolution=16, base_channels=4, norm="batch", c_dim=2, cond="concat"),
        UNetGenerator(img_resolution=16, base_channels=2, max_channels=8, norm="instance", dropout_at_eval=False),
        PatchGANDiscriminator(in_channels=4, base_channels=2, n_layers=2, norm="batch"),
        ResnetGenerator(base_channels=2, n_blocks=2),
    ]


def _inputs(m):
    if isinstance(m, DCGANGenerator):
        return (torch.randn(2, 8), torch.tensor([0, 2]), m.sample_codes(2, torch.Generator().manual_seed(0)))
    if isinstance(m, DCGANDiscriminator):
        return (torch.randn(2, 3, 16, 16), torch.tensor([1, 0]))
    if isinstance(m, PatchGANDiscriminator):
        return (torch.randn(2, 4, 32, 32),)
    return (torch.randn(2, 3, 16, 16),)


@pytest.mark.parametrize("idx", range(6))
def test_config_rebuilds_identical_model(idx):
    m = _models()[idx]
    if isinstance(m, DCGANDiscriminator) and m.config["spectral_norm"]:
        m(*_inputs(m))  # move the power-iteration vectors away from their initial state
    with torch.no_grad():  # batch-norm running statistics too
        for b in m.buffers():
            if b.is_floating_point():
                b.add_(0.1)
    cfg = json.loads(json.dumps(m.config))  # JSON-serialisable, as checkpoints store it
    torch.manual_seed(123)  # a different init: load_state_dict must bring everything over
    m2 = type(m)(**cfg)
    assert m2.config == m.config
    m2.load_state_dict(m.state_dict())
    m.eval(), m2.eval()
    inputs = _inputs(m)
    out, out2 = m(*inputs), m2(*inputs)
    for a, b in zip(out if isinstance(out, tuple) else (out,), out2 if isinstance(out2, tuple) else (out2,)):
        if isinstance(a, tuple):
            for u, v in zip(a, b):
                assert torch.equal(u, v)
        elif a is not None:
            assert torch.equal(a, b)


BAD_ARGS = [
    (DCGANGenerator, dict(img_resolution=24), "img_resolution must be a power of two >= 8"),
    (DCGANGenerator, dict(img_resolution=4), "img_resolution"),
    (DCGANGenerator, dict(z_dim=0), "z_dim"),
    (DCGANGenerator, dict(base_channels=2.0), "base_channels"),
    (DCGANGenerator, dict(c_dim=-1), "c_dim"),
    (DCGANGenerator, dict(cond="projection"), "cond"),
    (DCGANGenerator, dict(c_dim=3, cond="none"), "cond='concat'"),
    (DCGANGenerator, dict(norm="layer"), "norm"),
    (DCGANGenerator, dict(info_cat_dims=(1,)), "info_cat_dims"),
    (DCGANGenerator, dict(info_cat_dims=4), "info_cat_dims"),
    (DCGANGenerator, dict(info_cont_dim=-2), "info_cont_dim"),
    (DCGANGenerator, dict(init="xavier"), "init"),
    (DCGANDiscriminator, dict(img_resolution=100), "img_resolution"),
    (DCGANDiscriminator, dict(norm="group"), "norm"),
    (DCGANDiscriminator, dict(cond="film"), "cond"),
    (DCGANDiscriminator, dict(c_dim=2, cond="none"), "cond='projection'"),
    (DCGANDiscriminator, dict(aux_classes=1), "aux_classes"),
    (DCGANDiscriminator, dict(spectral_norm=1), "spectral_norm"),
    (DCGANDiscriminator, dict(minibatch_std="yes"), "minibatch_std"),
    (DCGANDiscriminator, dict(self_attention_at=True), "self_attention_at"),
    (DCGANDiscriminator, dict(img_resolution=16, self_attention_at=16), "self_attention_at"),
    (DCGANDiscriminator, dict(out="probability"), "out"),
    (UNetGenerator, dict(img_resolution=8), "img_resolution must be a power of two >= 16"),
    (UNetGenerator, dict(dropout=1.0), "dropout"),
    (UNetGenerator, dict(norm="none"), "norm"),
    (UNetGenerator, dict(base_channels=64, max_channels=32), "max_channels"),
    (UNetGenerator, dict(dropout_at_eval=None), "dropout_at_eval"),
    (PatchGANDiscriminator, dict(n_layers=0), "n_layers"),
    (PatchGANDiscriminator, dict(norm="layer"), "norm"),
    (PatchGANDiscriminator, dict(in_channels=0), "in_channels"),
    (ResnetGenerator, dict(n_blocks=0), "n_blocks"),
    (ResnetGenerator, dict(norm="layer"), "norm"),
    (ImagePool, dict(size=-1), "size"),
]


@pytest.mark.parametrize("cls,kwargs,match", BAD_ARGS, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD_ARGS])
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        cls(**kwargs)
    assert cls.__name__ in str(info.value)


def test_bad_inputs():
    G = DCGANGenerator(z_dim=8, img_resolution=8, base_channels=2)
    with pytest.raises(ValueError, match=r"z must be a float tensor \(N, z_dim\)"):
        G(torch.randn(2, 7))
    D = DCGANDiscriminator(img_resolution=8, base_channels=2)
    with pytest.raises(ValueError, match=r"x must be \(N, 3, 8, 8\)"):
        D(torch.randn(2, 3, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        D(torch.zeros(2, 3, 8, 8, dtype=torch.long))
    U = UNetGenerator(img_resolution=16, base_channels=2, max_channels=4)
    with pytest.raises(ValueError, match="multiples of 16"):
        U(torch.randn(1, 3, 24, 16))
    P = PatchGANDiscriminator(in_channels=6, base_channels=2)
    with pytest.raises(ValueError, match=r"cat\(\[condition, x\]\) must be \(N, 6"):
        P(torch.randn(1, 3, 32, 32), condition=torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="condition must be"):
        P(torch.randn(1, 3, 32, 32), condition=torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        P(torch.randn(1, 6, 16, 16))
