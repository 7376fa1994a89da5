"""CUDA-only checks (marked ``gpu``; skipped without a GPU): the CUDA kernel and the Triton kernel
against the reference on device, device-side per-sample alphas, full opcheck of the Triton ops,
and torch.compile(fullgraph=True) through both."""
import pytest
import torch

from fastgen import backend
from fastgen.functional import ddim_step
from fastgen.ops.ddim_step import ddim_step_reference

from helpers import assert_close

pytestmark = pytest.mark.gpu

IMPLS = ["cpp", "triton"]
SHAPES = [(2, 4, 32, 32), (1, 3, 17, 9), (0, 4, 8, 8), (5, 1000), (3,)]


def _need(impl):
    ok, why = backend.impl_available(impl, "cuda")
    if not ok:
        pytest.skip(why)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alphas", ["host", "device_per_sample", "host_per_sample_cpu_scalar_mix"])
@pytest.mark.parametrize("eta,clip", [(0.0, None), (1.0, True), (0.4, 0.5)])
def test_cuda_matches_reference(impl, dtype, shape, alphas, eta, clip):
    _need(impl)
    dev = torch.device("cuda")
    x = torch.randn(shape, device=dev).to(dtype)
    e = torch.randn(shape, device=dev).to(dtype)
    n = torch.randn(shape, device=dev).to(dtype) if eta > 0 else None
    b = shape[0] if len(shape) else 1
    if alphas == "host":
        a_t, a_p = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.55, dtype=torch.float64)
    elif alphas == "device_per_sample":
        a_t = torch.linspace(0.05, 0.8, b, dtype=torch.float64, device=dev)
        a_p = (a_t + 0.1).clamp(max=1.0)
    else:
        a_t = torch.linspace(0.05, 0.4, b, dtype=torch.float32, device=dev)
        a_p = torch.tensor(0.6, dtype=torch.float64)
    got = ddim_step(x, e, a_t, a_p, eta, n, clip, impl=impl)
    want = ddim_step_reference(x, e, a_t, a_p, eta, n, 0.0 if clip is None else float(clip))
    # device per-sample alphas: coefficients in fp32 in-kernel (host alphas: float64 on the host)
    tol = {} if dtype != torch.float32 else dict(rtol=5e-6, atol=5e-6)
    assert_close(got.x_prev, want[0], dtype, what=f"{impl} x_prev", **tol)
    assert_close(got.x0_pred, want[1], dtype, what=f"{impl} x0", **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_channels_last_and_out(impl):
    _need(impl)
    x = torch.randn(2, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    e = torch.randn(2, 3, 16, 16, device="cuda")
    want = ddim_step_reference(x, e, torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    got = ddim_step(x, e, 0.2, 0.7, impl=impl)
    assert got.x_prev.is_contiguous(memory_format=torch.channels_last)
    assert_close(got.x_prev, want[0])
    buf, x0 = x.clone(), torch.empty_like(x)
    ddim_step(buf, e, 0.2, 0.7, out=(buf, x0), impl=impl)
    assert_close(buf, want[0])
    assert_close(x0, want[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_cuda_backward_and_double_backward(impl):
    _need(impl)
    shape = (2, 3, 8, 8)
    x, e, n = (torch.randn(shape, device="cuda", requires_grad=True) for _ in range(3))
    a_t = torch.tensor([0.3, 0.6], dtype=torch.float64, device="cuda")
    a_p = torch.tensor([0.5, 0.8], dtype=torch.float64, device="cuda")
    v = torch.randn(shape, device="cuda", requires_grad=True)

    def run(i):
        out = ddim_step(x, e, a_t, a_p, 0.6, n, 0.9, impl=i)
        g = torch.autograd.grad(out.x_prev, (x, e, n), v, create_graph=True)
        gg = torch.autograd.grad(sum(t.square().sum() for t in g), v)
        return g + gg

    for a, b in zip(run(impl), run("torch")):
        assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_opcheck_triton_ops_on_cuda():
    _need("triton")
    from fastgen.ops.ddim_step import _triton_ops

    fwd, out, bwd = _triton_ops()
    x = torch.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    e = torch.randn_like(x, requires_grad=True)
    a_t = torch.tensor([0.3, 0.5], dtype=torch.float64, device="cuda")
    a_p = torch.tensor(0.7, dtype=torch.float64)
    torch.library.opcheck(fwd, (x, e, a_t, a_p, 0.5, torch.randn_like(x), 1.0))
    xd = x.detach()
    torch.library.opcheck(out, (xd, e.detach(), a_t, a_p, 0.0, None, 0.0, torch.empty_like(xd), torch.empty_like(xd)))
    torch.library.opcheck(bwd, (torch.randn_like(xd), None, xd, e.detach(), a_t, a_p, 0.5, 0.0, True))


def test_opcheck_cuda_cpp_ops():
    _need("cpp")
    x = torch.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    e = torch.randn_like(x, requires_grad=True)
    a_t = torch.tensor([0.3, 0.5], device="cuda")
    torch.library.opcheck(torch.ops.fastgen.ddim_step.default,
                          (x, e, a_t, torch.tensor(0.7, dtype=torch.float64), 0.5, torch.randn_like(x), 0.0))


@pytest.mark.parametrize("impl", IMPLS)
def test_compile_fullgraph_on_cuda(impl):
    _need(impl)
    sched = torch.linspace(0.05, 0.95, 10, dtype=torch.float64, device="cuda")

    def loop(x, eps):
        for i in range(3, -1, -1):
            x, _ = ddim_step(x, eps * (i + 1), sched[i], sched[i + 1], impl=impl)
        return x

    x, e = torch.randn(2, 4, 16, 16, device="cuda"), torch.randn(2, 4, 16, 16, device="cuda")
    torch._dynamo.reset()
    got = torch.compile(loop, fullgraph=True)(x, e)
    assert_close(got, loop(x, e), rtol=1e-5, atol=1e-5)
