"""Sampler steps: fastgen's samplers (one fused sampler_update call per step, ``out=`` buffers
reused as a sampling loop does) against the same step written in plain PyTorch (eager, and
torch.compile of it) and against diffusers' scheduler ``step``, on the same inputs.

Cases, at (16,4,64,64) fp32 (a latent-diffusion batch, cache-resident):

* ``ddim``: DDIM eta=0, epsilon prediction, step 10 of 50.
* ``ddim_cfg``: the same with classifier-free guidance ``u + s (c - u)`` (fused in fastgen; an
  extra expression before the step in the baselines, as diffusers' pipelines write it).
* ``euler_ancestral``: each implementation draws its noise its own way (fastgen: in-kernel
  Philox; eager/compile/diffusers: ``torch.randn``). Outputs are compared on x0 in the timed
  run, and on prev_sample with identical explicit noise beforehand.
* ``dpmpp_2m``: DPM-Solver++(2M) midpoint, step 10 of 20 (second order, x0 history in ``h1``).

The timed baselines return what the step returns (prev_sample and x0).
"""
import math

import pytest
import torch

from fastgen import backend
from fastgen.diffusion.samplers import DDIMSampler, DPMSolverMultistepSampler, EulerAncestralSampler
from harness import compare

SHAPE = (16, 4, 64, 64)
GUIDANCE = 7.5
CASES = ["ddim", "ddim_cfg", "euler_ancestral", "dpmpp_2m"]


def _fake_model(x, t):
    return 0.6 * x + 0.1 * math.sin(float(t) / 100.0)


def _setup(case):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    c = torch.randn(SHAPE, generator=g)
    u = torch.randn(SHAPE, generator=g)
    return x, c, u


def _diffusers():
    try:
        import diffusers
    except ImportError:  # pragma: no cover
        return None
    return diffusers


@pytest.mark.parametrize("case", CASES)
def test_sampler_step_fp32(benchmark, case):
    dev = torch.device("cpu")
    x, c, u = _setup(case)
    diffusers = _diffusers()
    bufs = (torch.empty_like(x), torch.empty_like(x))
    baselines = {}
    extra = {}

    if case in ("ddim", "ddim_cfg"):
        n, k = 50, 10
        smp = DDIMSampler()
        smp.set_timesteps(n)
        t = smp.timesteps[k]
        ti = int(t)
        a_t = float(smp.schedule.alphas_cumprod[ti])
        a_p = float(smp.schedule.alphas_cumprod[ti - 1000 // n])
        cfg = case == "ddim_cfg"

        def fast():
            smp._step_index = k
            if cfg:
                return tuple(smp.step(c, t, x, uncond=u, guidance_scale=GUIDANCE, out=bufs))
            return tuple(smp.step(c, t, x, out=bufs))

        def eager_fn(x, c, u):
            eps = u + GUIDANCE * (c - u) if cfg else c
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            return a_p**0.5 * x0 + (1 - a_p) ** 0.5 * eps, x0

        baselines["eager"] = lambda: eager_fn(x, c, u)
        if diffusers is not None:
            ds = diffusers.DDIMScheduler(clip_sample=False)
            ds.set_timesteps(n)

            def diff():
                eps = u + GUIDANCE * (c - u) if cfg else c
                r = ds.step(eps, t, x)
                return r.prev_sample, r.pred_original_sample

            baselines["diffusers"] = diff
        if not getattr(benchmark, "disabled", False):
            torch._dynamo.reset()
            comp = torch.compile(eager_fn)
            baselines["compile"] = lambda: comp(x, c, u)

    elif case == "euler_ancestral":
        n, k = 30, 10
        smp = EulerAncestralSampler()
        smp.set_timesteps(n)
        t = smp.timesteps[k]
        s, s_to = float(smp.sigmas[k]), float(smp.sigmas[k + 1])
        up = (s_to**2 * (s**2 - s_to**2) / s**2) ** 0.5
        down = (s_to**2 - up**2) ** 0.5
        dt = down - s

        def eager_fn(x, m, noise=None):
            x0 = x - s * m
            d = (x - x0) / s
            prev = x + d * dt
            prev = prev + (torch.randn_like(x) if noise is None else noise) * up
            return prev, x0

        def fast():
            smp._step_index = k
            r = smp.step(c, t, x, out=bufs)
            return r.pred_original_sample

        baselines["eager"] = lambda: eager_fn(x, c)[1]
        # prev_sample with identical explicit noise: fastgen == eager == diffusers
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
        smp._step_index = k
        got = smp.step(c, t, x, noise=noise).prev_sample
        want = eager_fn(x, c, noise)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if diffusers is not None:
            ds = diffusers.EulerAncestralDiscreteScheduler()
            ds.set_timesteps(n)
            ds._step_index = k
            ref = ds.step(c, t, x, generator=torch.Generator().manual_seed(9)).prev_sample
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)

            def diff():
                ds._step_index = k
                return ds.step(c, t, x).pred_original_sample

            baselines["diffusers"] = diff
        if not getattr(benchmark, "disabled", False):
            torch._dynamo.reset()
            comp = torch.compile(eager_fn)
            baselines["compile"] = lambda: comp(x, c)[1]
        extra["noise"] = "fastgen: in-kernel Philox; baselines: torch.randn"

    else:  # dpmpp_2m
        n, k = 20, 10
        smp = DPMSolverMultistepSampler(solver_order=2)
        smp.set_timesteps(n)
        x0_prev = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)) * 0.5
        t = smp.timesteps[k]
        sig = smp.sigmas.tolist()

        def al_sg(sigma):
            a = 1.0 / math.sqrt(sigma * sigma + 1.0)
            return a, sigma * a

        a_s0, s_s0 = al_sg(sig[k])
        a_t, s_t = al_sg(sig[k + 1])
        a_s1, s_s1 = al_sg(sig[k - 1])
        lam = lambda a, s_: math.log(a) - math.log(s_)  # noqa: E731
        h = lam(a_t, s_t) - lam(a_s0, s_s0)
        r0 = (lam(a_s0, s_s0) - lam(a_s1, s_s1)) / h
        em = math.exp(-h) - 1.0

        def eager_fn(x, m, x0_prev):
            x0 = (x - s_s0 * m) / a_s0
            d1 = (1.0 / r0) * (x0 - x0_prev)
            return (s_t / s_s0) * x - (a_t * em) * x0 - 0.5 * (a_t * em) * d1, x0

        hist_buf = bufs[1]
        state = {"reset": True}

        def fast():
            # the timed step reads its previous x0 from the out buffer it writes the new x0 to (in
            # place, as a loop passing the same x0 buffer does); the first call starts from x0_prev
            if state["reset"]:
                hist_buf.copy_(x0_prev)
                state["reset"] = False
            smp._step_index = k
            smp._hist = [hist_buf]
            return tuple(smp.step(c, t, x, out=bufs))

        want = eager_fn(x, c, x0_prev)
        got = fast()
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
        state["reset"] = True  # compare() checks its first call against eager again
        baselines["eager"] = lambda: eager_fn(x, c, x0_prev)
        if diffusers is not None:
            ds = diffusers.DPMSolverMultistepScheduler(solver_order=2)
            ds.set_timesteps(n)

            def diff():
                ds._step_index = k
                ds.lower_order_nums = 2
                ds.model_outputs = [None, x0_prev]  # shifted to [x0_prev, x0] inside step
                return ds.step(c, t, x).prev_sample, ds.model_outputs[-1]

            torch.testing.assert_close(diff()[0], want[0], rtol=2e-5, atol=2e-5)
            baselines["diffusers"] = diff
        if not getattr(benchmark, "disabled", False):
            torch._dynamo.reset()
            comp = torch.compile(eager_fn)
            baselines["compile"] = lambda: comp(x, c, x0_prev)

    info = compare(benchmark, fast, baselines, device=dev, rtol=2e-5, atol=2e-5,
                   group=f"sampler step {case} fp32 {SHAPE}")
    info.update(impl=backend.resolve("sampler_update", dev), case=case, shape=list(SHAPE), variant="fastgen-out",
                **extra)
    if "diffusers_ms" in info:
        print(f"\n{case}: fastgen {info['fastgen_ms']:.4f} ms, eager {info['eager_ms']:.4f} ms "
              f"({info['speedup_vs_eager']}x), diffusers {info['diffusers_ms']:.4f} ms "
              f"({info['speedup_vs_diffusers']}x)"
              + (f", compile {info['compile_ms']:.4f} ms ({info['speedup_vs_compile']}x)" if "compile_ms" in info
                 else ""))
