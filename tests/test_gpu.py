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


# ---------------------------------------------------------------------------------------------
# sample(cuda_graph=True): graph replay against eager sampling
# ---------------------------------------------------------------------------------------------
class _GraphModel(torch.nn.Module):
    """A small capturable eps-model: a 3x3 conv of the input plus a smooth timestep/label term;
    counts its Python calls (a graph replay makes none)."""

    def __init__(self, channels=4, out_channels=None):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, out_channels or channels, 3, padding=1)
        self.calls = 0

    def forward(self, x, t, class_labels=None):
        self.calls += 1
        tt = t.to(x.dtype).reshape(-1, 1, 1, 1)
        out = 0.1 * self.conv(x) + 0.5 * torch.sin(x.repeat(1, self.conv.out_channels // x.shape[1], 1, 1) + tt / 300)
        if class_labels is not None:
            out = out + 0.01 * class_labels.to(x.dtype).reshape(-1, 1, 1, 1)
        return out


def _graph_model(**kw):
    torch.manual_seed(0)
    return _GraphModel(**kw).cuda().eval()


@pytest.mark.parametrize("name,kw", [
    ("ddim", {}),
    ("ddim", {"guidance_scale": 3.0, "class_labels": [1, 2], "null_label": 0}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("euler", {}),
    ("heun", {}),
    ("pf_ode", {}),
])
def test_cuda_graph_sampling_matches_eager(name, kw):
    from fastgen.diffusion import sample

    torch.backends.cudnn.allow_tf32 = False  # the same conv numerics in both runs
    model = _graph_model()
    shape = (2, 4, 16, 16)
    x0 = torch.randn(shape, device="cuda")
    common = dict(sampler=name, steps=8, initial_noise=x0, progress=False, **kw)
    eager = sample(model, shape, **common)
    model.calls = 0
    graph = sample(model, shape, cuda_graph=True, **common)
    # warm-up (3) + capture (1) per graph, not one call per step: the steps were replayed
    assert model.calls == (8 if name == "heun" else 4)
    assert_close(graph, eager, rtol=1e-5, atol=1e-5, what=f"{name} cuda_graph vs eager")


def test_cuda_graph_return_intermediates_match_eager():
    from fastgen.diffusion import sample

    torch.backends.cudnn.allow_tf32 = False
    model = _graph_model()
    shape = (2, 4, 8, 8)
    x0 = torch.randn(shape, device="cuda")
    common = dict(sampler="dpmpp_2m", steps=5, initial_noise=x0, progress=False, return_intermediates=True)
    xe, ie = sample(model, shape, **common)
    xg, ig = sample(model, shape, cuda_graph=True, **common)
    assert ig["timesteps"] == ie["timesteps"]
    assert len(ig["samples"]) == 5 and len({t.data_ptr() for t in ig["samples"]}) == 5
    for a, b in zip(ig["samples"] + ig["pred_original_samples"], ie["samples"] + ie["pred_original_samples"]):
        assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(ig["samples"][-1], xg)


@pytest.mark.parametrize("name,skw", [("ddpm", {}), ("ddpm", {"variance_type": "learned_range"}),
                                      ("euler_ancestral", {}), ("ddim", {"eta": 1.0}), ("euler_maruyama", {})])
def test_cuda_graph_stochastic_reproducible(name, skw):
    from fastgen.diffusion import sample

    model = _graph_model(out_channels=8 if skw.get("variance_type") == "learned_range" else None)
    shape = (8, 4, 16, 16)

    def run(seed, dev="cuda"):
        return sample(model, shape, sampler=name, steps=6, sampler_kwargs=skw, progress=False, cuda_graph=True,
                      device="cuda", generator=torch.Generator(dev).manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # a CPU generator seeds the graph's CUDA noise generator: reproducible too
    assert torch.equal(run(5, "cpu"), run(5, "cpu"))
    # a different noise stream than eager sampling, but the same distribution (fresh noise at every
    # replay: a stale noise tensor added at every step would inflate the spread)
    eager = sample(model, shape, sampler=name, steps=6, sampler_kwargs=skw, progress=False, device="cuda",
                   generator=torch.Generator("cuda").manual_seed(0))
    assert abs(float(a.std()) - float(eager.std())) < 0.1 * float(eager.std())
    assert abs(float(a.mean()) - float(eager.mean())) < 0.1 * float(eager.std())


def test_cuda_graph_nonfinite_names_the_step():
    from fastgen.diffusion import NonFiniteSampleError, sample

    class Bad(_GraphModel):
        def forward(self, x, t, class_labels=None):
            out = super().forward(x, t)
            return torch.where(t.reshape(-1, 1, 1, 1) < 500, out * float("nan"), out)  # no host sync

    model = Bad().cuda().eval()
    with pytest.raises(NonFiniteSampleError, match=r"step 5 \(timestep 400\)"):
        sample(model, (2, 4, 8, 8), sampler="ddim", steps=10, progress=False, cuda_graph=True)


def test_cuda_graph_falls_back_with_a_warning():
    from fastgen.diffusion import sample

    model = _graph_model()
    shape = (2, 4, 8, 8)
    x0 = torch.randn(shape, device="cuda")
    for name, skw in (("heun", {"s_churn": 1.0}), ("ddim", {"thresholding": True})):
        with pytest.warns(RuntimeWarning, match="cuda_graph"):
            got = sample(model, shape, sampler=name, steps=4, sampler_kwargs=skw, initial_noise=x0, progress=False,
                         cuda_graph=True, generator=torch.Generator("cuda").manual_seed(0))
        want = sample(model, shape, sampler=name, steps=4, sampler_kwargs=skw, initial_noise=x0, progress=False,
                      generator=torch.Generator("cuda").manual_seed(0))
        assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# group_norm: the CUDA C++ kernels (impl="cpp" on CUDA tensors) against the float64 reference
# ---------------------------------------------------------------------------------------------
GN_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2)}
GN_GRAD_TOL = {torch.float32: (1e-4, 2e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (4e-2, 4e-2)}
GN_SHAPES = [
    ((2, 6, 5, 7), 3),       # odd spatial (scalar paths: S, C not multiples of the vector width)
    ((2, 6), 3),             # no spatial dims
    ((3, 32, 16, 16), 8),    # vector paths
    ((1, 64, 64, 64), 32),   # small N: the reductions are split into chunks
    ((2, 16, 4, 4, 4), 4),   # 5-d
    ((1, 8, 3000), 2),       # 3-d, split rows
]


def _gn_inputs(shape, G, dtype, layout="contiguous", affine=True, mod=True, seed=0, mean=0.5, std=2.0):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[0], shape[1]
    x = (torch.randn(shape, generator=g) * std + mean).to(dtype).cuda()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = (1 + 0.5 * torch.randn(c, generator=g)).cuda() if affine else None
    b = (0.5 * torch.randn(c, generator=g)).cuda() if affine else None
    s = (0.5 * torch.randn(n, c, generator=g)).cuda() if mod else None
    t = (0.5 * torch.randn(n, c, generator=g)).cuda() if mod else None
    gy = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 7)).to(dtype).cuda()
    return x, w, b, s, t, gy


def _gn_run(impl, x, G, w, b, s, t, act, gy, double=False):
    from fastgen.functional import group_norm

    cast = (lambda v: v.double()) if double else (lambda v: v)
    leaves = [cast(v.detach()).requires_grad_() if v is not None else None for v in (x, w, b, s, t)]
    y = group_norm(leaves[0], G, leaves[1], leaves[2], activation=act, scale=leaves[3], shift=leaves[4], impl=impl)
    inputs = [v for v in leaves if v is not None]
    grads = torch.autograd.grad(y, inputs, cast(gy))
    return y, list(grads)


def _gn_check(shape, G, dtype, layout, act, affine=True, mod=True, **kw):
    _need("cpp")
    x, w, b, s, t, gy = _gn_inputs(shape, G, dtype, layout, affine, mod, **kw)
    y, grads = _gn_run("cpp", x, G, w, b, s, t, act, gy)
    yr, grads_r = _gn_run("torch", x, G, w, b, s, t, act, gy, double=True)
    assert y.dtype == dtype and y.device.type == "cuda"
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    rt, at = GN_TOL[dtype]
    assert_close(y.double(), yr, what=f"y {dtype} {layout} {act}", rtol=rt, atol=at)
    rt, at = GN_GRAD_TOL[dtype]
    names = [n for n, v in zip(("x", "weight", "bias", "scale", "shift"), (x, w, b, s, t)) if v is not None]
    for name, g, gr, leaf in zip(names, grads, grads_r, [v for v in (x, w, b, s, t) if v is not None]):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        scale = max(1.0, float(gr.abs().max()))  # parameter grads are sums over N * S elements
        assert_close(g.double(), gr, what=f"grad {name} {dtype} {layout} {act}", rtol=rt, atol=at * scale)


@pytest.mark.parametrize("act", [None, "silu", "gelu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,G", GN_SHAPES, ids=[str(s) for s, _ in GN_SHAPES])
def test_group_norm_cuda_matches_reference(shape, G, dtype, layout, act):
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels_last is 4-d only")
    _gn_check(shape, G, dtype, layout, act)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine,mod", [(False, False), (True, False), (False, True)])
def test_group_norm_cuda_optional_params(layout, affine, mod):
    _gn_check((2, 32, 8, 8), 4, torch.float32, layout, "silu", affine=affine, mod=mod)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_group_norm_cuda_large_mean_small_std(layout):
    # (x - mean) a + c' keeps the precision where A x + B would not; Welford keeps the variance
    _gn_check((2, 32, 16, 16), 8, torch.float32, layout, None, mean=100.0, std=0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_group_norm_cuda_misaligned_scalar_path(dtype):
    _need("cpp")
    from fastgen.functional import group_norm
    from fastgen.ops.group_norm import group_norm_reference

    buf = torch.randn(1 + 2 * 16 * 8 * 8, device="cuda").to(dtype)
    x = buf[1:].view(2, 16, 8, 8)  # data pointer off the 16-byte grid
    w = torch.rand(16, device="cuda") + 0.5
    got = group_norm(x, 4, w, None, activation="gelu", impl="cpp")
    want = group_norm_reference(x.double(), 4, w.double(), None, activation="gelu")
    assert_close(got.double(), want, rtol=GN_TOL[dtype][0], atol=GN_TOL[dtype][1])


def test_group_norm_cuda_empty_and_deterministic():
    _need("cpp")
    from fastgen.functional import group_norm

    x = torch.randn(0, 8, 4, 4, device="cuda", requires_grad=True)
    y = group_norm(x, 2, impl="cpp")
    assert y.shape == x.shape
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.shape == x.shape
    x, w, b, s, t, gy = _gn_inputs((1, 64, 32, 32), 32, torch.float32)
    y1, g1 = _gn_run("cpp", x, 32, w, b, s, t, "silu", gy)
    y2, g2 = _gn_run("cpp", x, 32, w, b, s, t, "silu", gy)
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, c) for a, c in zip(g1, g2))


def test_group_norm_cuda_mean_rstd_outputs():
    _need("cpp")
    x, w, b, s, t, _ = _gn_inputs((2, 12, 6, 5), 3, torch.float32)
    _, mean, rstd = torch.ops.fastgen.group_norm(x, 3, w, b, s, t, 1e-5, 0)
    xg = x.double().reshape(2, 3, -1)
    assert_close(mean.double(), xg.mean(-1), rtol=1e-6, atol=1e-6)
    assert_close(rstd.double(), (xg.var(-1, unbiased=False) + 1e-5).rsqrt(), rtol=1e-5, atol=1e-6)


def test_group_norm_cuda_double_backward():
    _need("cpp")
    from fastgen.functional import group_norm

    x, w, b, s, t, gy = _gn_inputs((2, 8, 4, 4), 4, torch.float32)

    def run(impl):
        xs = x.detach().requires_grad_()
        y = group_norm(xs, 4, w, b, activation="silu", scale=s, shift=t, impl=impl)
        (g,) = torch.autograd.grad(y, xs, gy, create_graph=True)
        return torch.autograd.grad(g.square().sum(), xs)[0]

    assert_close(run("cpp"), run("torch"), rtol=1e-4, atol=1e-5)


def test_group_norm_cuda_opcheck_and_dispatch():
    _need("cpp")
    assert backend.resolve("group_norm", torch.device("cuda")) == "cpp"
    x, w, b, s, t, gy = _gn_inputs((2, 8, 4, 4), 4, torch.float32)
    torch.library.opcheck(torch.ops.fastgen.group_norm.default, (x.requires_grad_(), 4, w, b, s, t, 1e-5, 1))
    _, mean, rstd = torch.ops.fastgen.group_norm(x.detach(), 4, w, b, s, t, 1e-5, 1)
    torch.library.opcheck(torch.ops.fastgen.group_norm_backward.default,
                          (gy, x.detach(), mean, rstd, 4, w, b, s, t, 1e-5, 1, True, True, True, True, True))


def test_group_norm_cuda_compile_fullgraph():
    _need("cpp")
    from fastgen.functional import group_norm

    x, w, b, s, t, _ = _gn_inputs((2, 16, 8, 8), 4, torch.float16)

    def f(x):
        return group_norm(x, 4, w, b, activation="silu", scale=s, shift=t, impl="cpp")

    torch._dynamo.reset()
    assert_close(torch.compile(f, fullgraph=True)(x), f(x))


# ----------------------------------------------------------------------------- the trainer on CUDA
def _cuda_trainer(**kw):
    from train_fixtures import small_trainer
    return small_trainer(device="cuda", **kw)


@pytest.mark.parametrize("bf16", [False, True])
def test_trainer_cuda_resume_continues_the_run(tmp_path, bf16):
    """save -> load -> continue on CUDA equals the uninterrupted run (deterministic cuDNN; the
    trainer's generator is a CUDA generator, restored from the checkpoint)."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    a = _cuda_trainer(dropout=0.2, bf16=bf16)
    a.train(6)
    b = _cuda_trainer(dropout=0.2, bf16=bf16)
    b.train(3)
    path = b.save_checkpoint(tmp_path / "c.safetensors")
    c = _cuda_trainer(dropout=0.2, bf16=bf16, model_seed=7)
    c.load_checkpoint(path)
    c.train(3)
    for (k, pa), pc in zip(a.model.named_parameters(), c.model.parameters()):
        assert pa.device.type == "cuda"
        torch.testing.assert_close(pc, pa, rtol=1e-5, atol=1e-6, msg=k)
    assert a.generator.get_state().equal(c.generator.get_state())



# ----------------------------------------------------------------------------- attention (Triton)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(2, 4, 257, 257, 64), (1, 8, 1000, 77, 40), (2, 2, 129, 300, 128),
                                   (1, 2, 64, 64, 80)])
def test_attention_triton_on_cuda(dtype, tol, shape):
    _need("triton")
    from fastgen.functional import attention
    import torch.nn.functional as F

    B, H, nq, nk, d = shape
    q = torch.randn(B, H, nq, d, device="cuda", dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, H, nk, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    mask = torch.rand(B, 1, nq, nk, device="cuda") > 0.2
    mask[..., 0] = True
    for m in (None, mask):
        out = attention(q, k, v, attn_mask=m, impl="triton")
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=m)
        assert_close(out.float(), ref, rtol=tol, atol=tol)
        go = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), go),
                        torch.autograd.grad(ref, (q, k, v), go.float())):
            assert_close(a.float(), b.float(), rtol=5 * tol, atol=5 * tol)


def test_attention_triton_opcheck_and_compile_on_cuda():
    _need("triton")
    from fastgen.functional import attention
    from fastgen.ops.attention import _triton_ops

    fwd = _triton_ops()[0]
    q, k, v = (torch.randn(2, 2, 70, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    torch.library.opcheck(fwd, (q, k, v, None, 0.125, 0.0, 0))
    torch.library.opcheck(fwd, (q, k, v, torch.zeros(2, 1, 70, 70, device="cuda", dtype=torch.float16), 0.125, 0.1, 3))
    compiled = torch.compile(lambda a, b, c: attention(a, b, c, impl="triton"), fullgraph=True)
    assert_close(compiled(q, k, v), attention(q, k, v, impl="triton"), rtol=1e-3, atol=1e-3)


def test_attention_triton_dropout_matches_reference_on_cuda():
    _need("triton")
    from fastgen.functional import attention
    from fastgen.ops.attention import attention_reference

    q, k, v = (torch.randn(1, 2, 100, 64, device="cuda", requires_grad=True) for _ in range(3))
    out = attention(q, k, v, dropout_p=0.1, generator=torch.Generator().manual_seed(1), impl="triton")
    ref = attention_reference(q, k, v, dropout_p=0.1, generator=torch.Generator().manual_seed(1))
    assert_close(out, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- upfirdn2d (Triton)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_upfirdn2d_triton_on_cuda(dtype, tol, layout):
    _need("triton")
    from fastgen.functional import downsample2d, setup_filter, upfirdn2d, upsample2d
    from fastgen.ops.upfirdn2d import upfirdn2d_reference

    f = setup_filter([1, 3, 3, 1], device="cuda")
    f2 = torch.randn(3, 5, device="cuda")
    x = torch.randn(4, 32, 33, 31, device="cuda").to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    cases = ((lambda t: upsample2d(t, f, impl="triton"),
              lambda t: upfirdn2d_reference(t, f, 2, 1, (2, 1, 2, 1), gain=4.0)),
             (lambda t: downsample2d(t, f, impl="triton"), lambda t: upfirdn2d_reference(t, f, 1, 2, 1)),
             (lambda t: upfirdn2d(t, f2, (1, 2), (3, 1), (2, -1, 0, 3), True, 1.5, impl="triton"),
              lambda t: upfirdn2d_reference(t, f2, (1, 2), (3, 1), (2, -1, 0, 3), True, 1.5)))
    for fn, ref in cases:
        xg = x.detach().requires_grad_()
        y = fn(xg)
        want = ref(x.double())
        assert y.dtype == dtype
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert y.is_contiguous(memory_format=fmt)
        assert_close(y.double(), want, rtol=tol, atol=tol)
        gy = torch.randn_like(y)
        x64 = x.double().requires_grad_()
        assert_close(torch.autograd.grad(y, xg, gy)[0].double(), torch.autograd.grad(ref(x64), x64, gy.double())[0],
                     rtol=5 * tol, atol=5 * tol)


def test_upfirdn2d_triton_opcheck_double_backward_and_compile_on_cuda():
    _need("triton")
    from fastgen.functional import setup_filter, upsample2d
    from fastgen.ops.upfirdn2d import _triton_ops, upfirdn2d_reference

    op = _triton_ops()
    f = setup_filter([1, 3, 3, 1], device="cuda")
    x = torch.randn(2, 8, 16, 16, device="cuda", requires_grad=True)
    torch.library.opcheck(op, (x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0))
    gy = torch.randn(2, 8, 32, 32, device="cuda", requires_grad=True)
    gx, = torch.autograd.grad(upsample2d(x, f, impl="triton"), x, gy, create_graph=True)
    u = torch.randn_like(x)
    dgy, = torch.autograd.grad(gx, gy, u)
    assert_close(dgy, upfirdn2d_reference(u, f, 2, 1, (2, 1, 2, 1), gain=4.0), rtol=1e-5, atol=1e-5)
    compiled = torch.compile(lambda t: upsample2d(t, f, impl="triton"), fullgraph=True)
    assert_close(compiled(x), upsample2d(x, f, impl="triton"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.float16, 2e-2)])
def test_conv2d_on_cuda_every_order_matches_torch(dtype, tol):
    """fastgen::conv2d on cuDNN: forward, R1-style double backward and opcheck against F.conv2d
    (tolerances allow TF32 / fp16 convolutions)."""
    _need("cpp")
    import torch.nn.functional as F
    from fastgen.functional import conv2d

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 16, 20, 20, device="cuda", generator=g).to(dtype)
    w = (torch.randn(32, 16, 3, 3, device="cuda", generator=g) * 0.1).to(dtype)

    def r1(conv):
        xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = conv(xr, wr, None, 2, 1)
        gx, = torch.autograd.grad(y.float().square().sum(), xr, create_graph=True)
        return (y,) + torch.autograd.grad(gx.float().square().sum(), (xr, wr))

    got = r1(lambda *a: conv2d(*a, impl="cpp"))
    want = r1(F.conv2d)
    for a, e in zip(got, want):
        scale = e.float().abs().max().item() + 1e-6
        assert_close(a.float() / scale, e.float() / scale, rtol=tol, atol=tol)
    torch.library.opcheck(torch.ops.fastgen.conv2d.default,
                          (x.float().requires_grad_(), w.float().requires_grad_(), None, [2, 2], [1, 1], [1, 1], 1))
