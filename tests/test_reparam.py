"""reparameterize: the fused VAE posterior sample + KL (in-kernel Philox noise), against the reference."""
import pytest
import torch

import fastgen
from fastgen import backend
from fastgen.functional import reparameterize
from fastgen.ops.reparam import reparameterize_reference
from fastgen.ops.sampler_update import noise_like

D64 = torch.float64
IMPLS = ["cpp", "triton"]


def _skip(impl):
    ok, why = backend.op_impl_available("reparameterize", impl, "cpu")
    if not ok:
        pytest.skip(why)


def _inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), (torch.randn(shape, generator=g) * 0.5 - 1).to(dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (3, 7), (2, 5, 3, 3), (1, 40000), (5, 1)], ids=str)
@pytest.mark.parametrize("given_noise", [False, True])
def test_forward_and_grads_match_float64_reference(impl, shape, given_noise):
    _skip(impl)
    if impl == "triton" and shape[-1] > 1000:
        pytest.skip("interpreter time")
    mu, lv = _inputs(shape)
    seed, offset = 1234567, 3
    noise = torch.randn(shape) if given_noise else None
    m1, l1 = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
    out = reparameterize(m1, l1, noise=noise, seed=None if given_noise else seed, offset=offset, impl=impl)
    gz, gkl = torch.randn(shape), torch.rand(shape[0]) + 0.5
    dm, dl = torch.autograd.grad((out.z * gz).sum() + (out.kl * gkl).sum(), (m1, l1))
    eps = noise if given_noise else noise_like(mu, seed, offset)
    m2, l2 = mu.double().requires_grad_(True), lv.double().requires_grad_(True)
    ref = reparameterize_reference(m2, l2, eps.double())
    rm, rl = torch.autograd.grad((ref.z * gz.double()).sum() + (ref.kl * gkl.double()).sum(), (m2, l2))
    # the in-kernel noise equals noise_like's to ~1e-6 (polynomial log/sin/cos on CPU)
    torch.testing.assert_close(out.z.double(), ref.z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.kl.double(), ref.kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dm.double(), rm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dl.double(), rl, rtol=1e-5, atol=1e-5)
    assert out.kl.dtype == torch.float32 and out.kl.shape == (shape[0],)


def test_noise_is_standard_normal_and_seeded():
    mu, lv = torch.zeros(64, 4096), torch.zeros(64, 4096)
    z = reparameterize(mu, lv, seed=5).z
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert torch.equal(reparameterize(mu, lv, seed=5).z, z)
    assert not torch.equal(reparameterize(mu, lv, seed=6).z, z)
    a = reparameterize(mu, lv, generator=torch.Generator().manual_seed(0)).z
    b = reparameterize(mu, lv, generator=torch.Generator().manual_seed(0)).z
    assert torch.equal(a, b)
    with fastgen.use_backend("torch"):  # the reference uses the same stream
        torch.testing.assert_close(reparameterize(mu, lv, seed=5).z, z, rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_channels_last(dtype):
    mu, lv = _inputs((2, 4, 6, 6), dtype)
    mu, lv = mu.to(memory_format=torch.channels_last), lv.to(memory_format=torch.channels_last)
    m1, l1 = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
    out = reparameterize(m1, l1, seed=9)
    assert out.z.dtype == dtype and out.z.stride() == mu.stride()
    dm, dl = torch.autograd.grad(out.z.float().sum() + out.kl.sum(), (m1, l1))
    eps = noise_like(mu, 9, 0)
    ref = reparameterize_reference(mu.double(), lv.double(), eps.double())
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(out.z.double(), ref.z, **tol)
    torch.testing.assert_close(out.kl.double(), ref.kl, rtol=1e-3, atol=1e-2)


def test_second_order_compile_opcheck_and_errors():
    mu, lv = _inputs((3, 5))
    m1, l1 = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
    out = reparameterize(m1, l1, seed=2)
    g1 = torch.autograd.grad(out.z.square().sum() + out.kl.sum(), (m1, l1), create_graph=True)
    g2 = torch.autograd.grad(g1[0].sum() + g1[1].square().sum(), (m1, l1))
    eps = noise_like(mu, 2, 0).double()
    m2, l2 = mu.double().requires_grad_(True), lv.double().requires_grad_(True)
    ref = reparameterize_reference(m2, l2, eps)
    r1 = torch.autograd.grad(ref.z.square().sum() + ref.kl.sum(), (m2, l2), create_graph=True)
    r2 = torch.autograd.grad(r1[0].sum() + r1[1].square().sum(), (m2, l2))
    for a, b in zip(g2, r2):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
    torch.library.opcheck(torch.ops.fastgen.reparam_kl.default, (mu, lv, None, 3, 0))
    torch.library.opcheck(torch.ops.fastgen.reparam_kl.default, (mu, lv, torch.randn(3, 5), 0, 0))
    f = torch.compile(lambda a, b: reparameterize(a, b, seed=4).kl.sum(), fullgraph=True)
    torch.testing.assert_close(f(mu, lv), reparameterize_reference(mu, lv, noise_like(mu, 4, 0)).kl.sum(),
                               rtol=1e-5, atol=1e-4)
    assert torch.autograd.gradcheck(lambda a, b: reparameterize(a, b, seed=1), (mu.double().requires_grad_(),
                                                                                lv.double().requires_grad_()))
    with pytest.raises(ValueError, match="logvar has shape"):
        reparameterize(mu, lv[:2])
    with pytest.raises(TypeError, match="mu has dtype"):
        reparameterize(mu.long(), lv.long())
    with pytest.raises(ValueError, match="seed"):
        reparameterize(mu, lv, seed=-1)
    with pytest.raises(ValueError, match="logvar has shape"):
        torch.ops.fastgen.reparam_kl(mu, lv[:, :2], None, 0, 0)
    assert reparameterize(torch.zeros(0, 3), torch.zeros(0, 3)).kl.shape == (0,)
