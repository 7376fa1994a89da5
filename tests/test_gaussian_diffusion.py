"""GaussianDiffusion: the training loss against plain-PyTorch references, label dropout, the
improved-DDPM hybrid loss, gradients and a short training run."""
import math

import pytest
import torch

from fastgen.diffusion import GaussianDiffusion, make_schedule

SHAPE = (4, 3, 8, 8)


class TinyNet(torch.nn.Module):
    """A tiny conditional conv net: (x_t, t, class_labels) -> prediction (C or 2C channels)."""

    def __init__(self, c=3, out_mult=1, num_classes=None, hidden=16):
        super().__init__()
        self.inp = torch.nn.Conv2d(c, hidden, 3, padding=1)
        self.mid = torch.nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = torch.nn.Conv2d(hidden, c * out_mult, 3, padding=1)
        self.temb = torch.nn.Linear(2, hidden)
        self.cemb = torch.nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.seen_labels = []

    def forward(self, x, t, class_labels=None):
        tf = t.float() / 1000.0
        e = self.temb(torch.stack([torch.sin(3 * tf), torch.cos(3 * tf)], dim=1))
        if self.cemb is not None and class_labels is not None:
            self.seen_labels.append(class_labels.clone())
            e = e + self.cemb(class_labels)
        h = torch.nn.functional.silu(self.inp(x) + e[:, :, None, None])
        h = torch.nn.functional.silu(self.mid(h))
        return self.out(h)


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.randn(SHAPE, generator=g))


def fixed_tn(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([0, 10, 500, 999]), torch.randn(SHAPE, generator=g)


def reference_mse(model, sched, x0, t, noise, pred, weighting="uniform", gamma=5.0):
    ab = sched.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    out = model(x_t, t)
    target = {"epsilon": noise, "sample": x0, "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[pred]
    per = ((out[:, : x0.shape[1]] - target) ** 2).mean(dim=(1, 2, 3))
    snr = (ab / (1 - ab)).flatten().double()
    if weighting == "min_snr":
        ms = torch.clamp(snr, max=gamma)
        w = {"epsilon": ms / snr, "sample": ms, "v_prediction": ms / (snr + 1)}[pred].float()
    elif isinstance(weighting, torch.Tensor):
        w = weighting[t].float()
    else:
        w = torch.ones_like(per)
    return (w * per).mean(), out, x_t


@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr", "tensor"])
def test_loss_matches_reference(pred, weighting):
    torch.manual_seed(0)
    model = TinyNet()
    sched = make_schedule("linear")
    w = torch.linspace(0.5, 2.0, 1000, dtype=torch.float64) if weighting == "tensor" else weighting
    diff = GaussianDiffusion(model, sched, prediction_type=pred, loss_weighting=w)
    x0 = data()
    t, noise = fixed_tn()
    got = diff.loss(x0, t=t, noise=noise)
    want, _, _ = reference_mse(model, sched, x0, t, noise, pred, w)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert diff(x0, t=t, noise=noise).item() == pytest.approx(got.item(), rel=1e-6)  # forward = loss


def test_gradients_flow_to_the_model():
    model = TinyNet()
    diff = GaussianDiffusion(model)
    x0 = data()
    t, noise = fixed_tn()
    diff.loss(x0, t=t, noise=noise).backward()
    ref_model = TinyNet()
    ref_model.load_state_dict(model.state_dict())
    want, _, _ = reference_mse(ref_model, diff.schedule, x0, t, noise, "epsilon")
    want.backward()
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_label_dropout_rate():
    model = TinyNet(num_classes=10)
    diff = GaussianDiffusion(model, num_classes=10, p_uncond=0.2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(2000, 3, 2, 2)
    labels = torch.randint(0, 10, (2000,), generator=g)
    diff.loss(x0, class_labels=labels, generator=g)
    seen = model.seen_labels[-1]
    dropped = (seen == 10).float().mean().item()
    assert abs(dropped - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 2000)
    kept = seen != 10
    assert torch.equal(seen[kept], labels[kept])
    # eval mode: no dropout
    diff.eval()
    diff.loss(x0, class_labels=labels, generator=g)
    assert torch.equal(model.seen_labels[-1], labels)


def _reference_vlb(sched, x0, x_t, t, eps_pred, v):
    """Improved-DDPM L_t (bits/dim) written out independently, in float64."""
    betas = sched.betas
    ab = sched.alphas_cumprod
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    out = []
    for i in range(x0.shape[0]):
        ti = int(t[i])
        x0i, xti, ei, vi = (a[i].double() for a in (x0, x_t, eps_pred, v))
        post_var = betas * (1 - ab_prev) / (1 - ab)
        post_var_clipped = post_var.clone()
        post_var_clipped[0] = post_var[1]
        mean_c1 = betas[ti] * ab_prev[ti].sqrt() / (1 - ab[ti])
        mean_c2 = (1 - ab_prev[ti]) * (1 - betas[ti]).sqrt() / (1 - ab[ti])
        q_mean = mean_c1 * x0i + mean_c2 * xti
        q_logvar = torch.log(post_var_clipped[ti])
        pred_x0 = (xti - (1 - ab[ti]).sqrt() * ei) / ab[ti].sqrt()
        p_mean = mean_c1 * pred_x0 + mean_c2 * xti
        frac = (vi + 1) / 2
        p_logvar = frac * torch.log(betas[ti]) + (1 - frac) * q_logvar
        if ti > 0:
            kl = 0.5 * (-1 + p_logvar - q_logvar + torch.exp(q_logvar - p_logvar)
                        + (q_mean - p_mean) ** 2 * torch.exp(-p_logvar))
            out.append(kl.mean() / math.log(2))
        else:
            std = torch.exp(0.5 * p_logvar)
            normal = torch.distributions.Normal(p_mean, std)
            hi = torch.where(x0i > 0.999, torch.ones_like(x0i), normal.cdf(x0i + 1 / 255))
            lo = torch.where(x0i < -0.999, torch.zeros_like(x0i), normal.cdf(x0i - 1 / 255))
            nll = -torch.log((hi - lo).clamp(min=1e-12))
            out.append(nll.mean() / math.log(2))
    return torch.stack(out)


def test_learn_sigma_hybrid_loss_matches_reference():
    torch.manual_seed(0)
    model = TinyNet(out_mult=2)
    sched = make_schedule("cosine")
    diff = GaussianDiffusion(model, sched, learn_sigma=True, vlb_weight=0.001)
    # data on the 256-level grid, with saturated values (edge bins)
    x0 = torch.round((data() * 1.3).clamp(-1, 1) * 127.5 + 127.5) / 127.5 - 1
    t, noise = fixed_tn()
    loss, terms = diff.loss(x0, t=t, noise=noise, return_terms=True)
    ab = sched.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    out = model(x_t, t)
    eps, v = out[:, :3], out[:, 3:]
    mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
    vlb = _reference_vlb(sched, x0, x_t, t, eps.detach(), v.detach()).float()
    torch.testing.assert_close(terms["mse"], mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["vlb"], vlb, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(loss, (mse + 1000 * 0.001 * vlb).mean(), rtol=2e-4, atol=1e-5)


def test_learn_sigma_vlb_trains_variance_only():
    """The VLB term's gradient reaches the variance channels, not the mean's (stop-grad)."""
    model = TinyNet(out_mult=2)
    diff = GaussianDiffusion(model, learn_sigma=True)
    x0 = data()
    t, noise = fixed_tn()
    _, terms = diff.loss(x0, t=t, noise=noise, return_terms=True)
    out_w = model.out.weight
    (g,) = torch.autograd.grad(terms["vlb"].sum(), out_w)
    assert g[:3].abs().max() == 0 and g[3:].abs().max() > 0


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = TinyNet(num_classes=4, hidden=24)
    diff = GaussianDiffusion(model, make_schedule("linear", 100), num_classes=4, p_uncond=0.1)
    opt = torch.optim.Adam(diff.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tanh(torch.randn(16, 3, 8, 8, generator=g)) * 0.5
    labels = torch.randint(0, 4, (16,), generator=g)
    t_eval, n_eval = torch.randint(0, 100, (16,), generator=g), torch.randn(x0.shape, generator=g)
    diff.eval()
    with torch.no_grad():
        before = diff.loss(x0, labels, t=t_eval, noise=n_eval).item()
    diff.train()
    for _ in range(40):
        opt.zero_grad()
        diff.loss(x0, labels, generator=g).backward()
        opt.step()
    diff.eval()
    with torch.no_grad():
        after = diff.loss(x0, labels, t=t_eval, noise=n_eval).item()
    assert after < 0.7 * before, (before, after)


def test_sample_convenience_uses_null_class_and_learned_variance():
    model = TinyNet(out_mult=2, num_classes=5)
    diff = GaussianDiffusion(model, make_schedule("linear", 100), num_classes=5, learn_sigma=True)
    x = diff.sample((2, 3, 8, 8), sampler="ddpm", steps=4, guidance_scale=2.0, class_labels=torch.tensor([1, 2]),
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
    assert model.seen_labels[-1].tolist() == [1, 2, 5, 5]
    assert diff.training  # restored
    y = diff.sample((2, 3, 8, 8), sampler="dpmpp_2m", steps=3, progress=False)
    assert y.shape == (2, 3, 8, 8)


def test_bad_inputs():
    model = TinyNet()
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianDiffusion(model, prediction_type="eps")
    with pytest.raises(ValueError, match="loss_weighting"):
        GaussianDiffusion(model, loss_weighting="snr")
    with pytest.raises(ValueError, match="loss_weighting"):
        GaussianDiffusion(model, loss_weighting=torch.ones(10))
    with pytest.raises(ValueError, match="p_uncond"):
        GaussianDiffusion(model, p_uncond=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        GaussianDiffusion(model, num_classes=0)
    with pytest.raises(TypeError, match="schedule"):
        GaussianDiffusion(model, schedule="linear")
    diff = GaussianDiffusion(model)
    x0 = data()
    with pytest.raises(ValueError, match="t must"):
        diff.loss(x0, t=torch.tensor([0, 1, 2, 1000]))
    with pytest.raises(ValueError, match="noise"):
        diff.loss(x0, noise=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="x0"):
        diff.loss(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="model output"):
        GaussianDiffusion(model, learn_sigma=True).loss(x0)
    cond = GaussianDiffusion(TinyNet(num_classes=3), num_classes=3)
    with pytest.raises(ValueError, match="class_labels"):
        cond.loss(x0, class_labels=torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="class_labels"):
        cond.loss(x0, class_labels=torch.tensor([0.0, 1.0, 2.0, 1.0]))
