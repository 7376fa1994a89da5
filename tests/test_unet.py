"""The diffusion U-Net (fastgen.models.UNet) and its blocks."""
import pytest
import torch

import fastgen
from fastgen.diffusion import GaussianDiffusion, make_schedule
from fastgen.models import UNet
from fastgen.nn.unet_blocks import AttentionBlock, Downsample, ResBlock, Upsample

SMALL = dict(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
             num_heads=2, num_groups=8)


def _randomise(model, seed=0):
    """Zero-initialised output layers make a fresh model output 0; give every parameter a value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_preset_sizes():
    n = sum(p.numel() for p in UNet.from_preset("cifar10").parameters())
    assert 35.5e6 < n < 36.0e6  # DDPM's CIFAR-10 network: 35.7M
    tiny = UNet.from_preset("tiny")
    assert sum(p.numel() for p in tiny.parameters()) < 2e6
    with pytest.raises(ValueError, match="preset"):
        UNet.from_preset("huge")


@pytest.mark.parametrize("opts", [dict(), dict(use_scale_shift_norm=False), dict(resblock_updown=True),
                                  dict(learn_sigma=True, num_classes=3), dict(conv_resample=False),
                                  dict(num_head_channels=8)], ids=str)
def test_forward_shapes_and_zero_init(opts):
    m = UNet(**SMALL, **opts)
    x = torch.randn(3, 3, 16, 16)
    kw = {"class_labels": torch.tensor([0, 2, 3])} if opts.get("num_classes") else {}
    y = m(x, torch.tensor([1, 500, 999]), **kw)
    assert y.shape == (3, 6 if opts.get("learn_sigma") else 3, 16, 16)
    assert torch.count_nonzero(y) == 0  # zero-initialised output conv (ADM)
    assert m(x, 7, **kw).shape == y.shape  # scalar t


def test_fused_backend_equals_reference_outputs_and_grads():
    """The U-Net on fastgen's fused kernels equals the same model on the reference ops."""
    torch.manual_seed(0)
    m = _randomise(UNet(**SMALL, num_classes=3, dropout=0.0))
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3.0, 700.0])
    y = torch.tensor([1, 3])

    def run():
        m.zero_grad()
        out = m(x, t, class_labels=y)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}

    out_fast, g_fast = run()
    with fastgen.use_backend("torch"):
        out_ref, g_ref = run()
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-4)
    for k in g_ref:
        torch.testing.assert_close(g_fast[k], g_ref[k], rtol=1e-3, atol=1e-3, msg=lambda s: f"{k}: {s}")


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    m = UNet(**SMALL)
    diff = GaussianDiffusion(m, make_schedule("cosine"))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    data = torch.zeros(16, 3, 16, 16)
    data[:, :, 4:12, 4:12] = 1.0  # one fixed picture: easy to learn
    data = data * 2 - 1
    losses = []
    for _ in range(30):
        loss = diff.loss(data, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8


def test_sampling_with_guidance_runs():
    m = _randomise(UNet(**SMALL, num_classes=2)).eval()
    out = fastgen.sample(m, (2, 3, 16, 16), sampler="ddim", steps=3, guidance_scale=2.0,
                         class_labels=torch.tensor([0, 1]), null_label=m.null_class, progress=False,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_blocks():
    x = torch.randn(2, 8, 8, 8)
    emb = torch.randn(2, 12)
    assert ResBlock(8, 12, 16, num_groups=4)(x, emb).shape == (2, 16, 8, 8)
    assert ResBlock(8, 12, down=True, num_groups=4)(x, emb).shape == (2, 8, 4, 4)
    assert ResBlock(8, 12, up=True, num_groups=4)(x, emb).shape == (2, 8, 16, 16)
    torch.testing.assert_close(ResBlock(8, 12, num_groups=4)(x, emb), x)  # identity at init
    torch.testing.assert_close(AttentionBlock(8, num_heads=2, num_groups=4)(x), x)
    assert Downsample(8)(x).shape == (2, 8, 4, 4) and Upsample(8, False)(x).shape == (2, 8, 16, 16)
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlock(8, num_heads=3)
    with pytest.raises(ValueError, match="exclusive"):
        ResBlock(8, 12, up=True, down=True)


def test_bad_input():
    m = UNet(**SMALL, num_classes=3)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="class_labels"):
        m(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="class_labels"):
        m(x, torch.tensor([1, 2]), class_labels=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"x must be"):
        m(torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="t must"):
        m(x, torch.tensor([1, 2, 3]), class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_labels given"):
        UNet(**SMALL)(x, 1, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="image_size"):
        UNet(**{**SMALL, "image_size": 15})
    with pytest.raises(ValueError, match="channel_mult"):
        UNet(**{**SMALL, "channel_mult": ()})
