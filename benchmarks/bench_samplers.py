"""Sampler steps: one step of every fastgen sampler (one fused ``sampler_update`` call, ``out=``
buffers reused as a sampling loop does) against the same step written in plain PyTorch (eager,
and ``torch.compile`` of it) and against diffusers' scheduler ``step`` on the same inputs.

Every case runs at (16,4,64,64) fp32 (a latent-diffusion batch, cache-resident), mid-trajectory:

=================  ==========================================================================
``ddpm``           DDPM ancestral, fixed small variance, step 10 of 50 (diffusers ``DDPMScheduler``)
``ddpm_learned``   DDPM with learned variance (``learned_range``: model output has 2C channels)
``ddim``           DDIM eta=0, step 10 of 50 (``DDIMScheduler``)
``ddim_cfg``       the same with classifier-free guidance ``u + s (c - u)`` (fused in fastgen; an
                   expression before the step in the baselines, as diffusers' pipelines write it)
``euler``          Euler, step 10 of 30 (``EulerDiscreteScheduler``)
``euler_ancestral``  Euler-ancestral, step 10 of 30 (``EulerAncestralDiscreteScheduler``)
``heun``           Heun's correction stage of step 10 of 30 (``HeunDiscreteScheduler``)
``dpmpp_2m``       DPM-Solver++(2M), step 10 of 20 (``DPMSolverMultistepScheduler``)
``dpmpp_3m``       DPM-Solver++(3M), step 10 of 20
``euler_maruyama`` reverse VP-SDE Euler-Maruyama, step 10 of 100 (diffusers' deprecated
                   ``ScoreSdeVpScheduler.step_pred``: timed only, its time grid differs)
``pf_ode``         Euler on the VP probability-flow ODE (no diffusers counterpart)
=================  ==========================================================================

Deterministic steps are compared on (prev_sample, pred_original_sample) in the timed run.
Stochastic steps draw their noise each their own way when timed (fastgen: in-kernel Philox;
eager/compile/diffusers: ``torch.randn``), so they are checked beforehand with the same explicit
noise (fastgen ``noise=`` == eager == diffusers with an equally seeded generator) and timed on
prev_sample. The baselines compute what their step returns (diffusers' ``step`` also builds its
output object; ``EulerDiscreteScheduler`` draws churn noise it does not use at s_churn=0).
"""
import math

import pytest
import torch

from fastgen import backend
from fastgen.diffusion import samplers as S
from harness import compare

SHAPE = (16, 4, 64, 64)
GUIDANCE = 7.5
TOL = dict(rtol=2e-5, atol=2e-5)


def _diffusers():
    try:
        import diffusers
    except ImportError:  # pragma: no cover
        return None
    return diffusers


def _randn(seed, shape=SHAPE, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


class Case:
    """What one benchmark case times: ``fast()``; ``eager(*args)`` (also compiled); optional
    ``diffusers()``; ``stochastic`` cases are checked with explicit noise in ``precheck``."""

    def __init__(self, fast, eager, args, diffusers=None, stochastic=False, diffusers_checked=True, note=None):
        self.fast, self.eager, self.args = fast, eager, args
        self.diffusers, self.stochastic = diffusers, stochastic
        self.diffusers_checked, self.note = diffusers_checked, note


def _out():
    return torch.empty(SHAPE), torch.empty(SHAPE)


def _stepper(smp, k, t, m, x, setup=None, **kw):
    """fastgen's timed step: reset the step counter (and any state), one fused call into out bufs."""
    bufs = _out()

    def fast():
        smp._step_index = k
        if setup is not None:
            setup()
        r = smp.step(m, t, x, out=bufs, **kw)
        return r.prev_sample, r.pred_original_sample

    return fast


def _prev_only(fast_pair):
    return lambda: fast_pair()[0]


def _check(got, *wants):
    for w in wants:
        torch.testing.assert_close(got, w, **TOL)


def _stochastic_case(smp, k, t, m, x, eager, ds_step=None, diff=None, **case_kw):
    """A stochastic step: fastgen with explicit noise == eager with it (== diffusers' step given an
    equally seeded generator, ``ds_step(generator) -> prev_sample``), checked now; timed later with
    each drawing its own noise. ``diff`` times a diffusers step that is not compared."""
    noise = _randn(9)
    smp._step_index = k
    got = smp.step(m, t, x, noise=noise).prev_sample
    wants = [eager(x, m, noise)]
    if ds_step is not None:
        wants.append(ds_step(torch.Generator().manual_seed(9)))
        diff = lambda: ds_step(None)  # noqa: E731
    _check(got, *wants)
    return Case(_prev_only(_stepper(smp, k, t, m, x)), eager, (x, m), diff, stochastic=True, **case_kw)


# ------------------------------------------------------------------------------------------ cases
def _ddpm(d, learned):
    n, k = 50, 10
    smp = S.DDPMSampler(variance_type="learned_range" if learned else "fixed_small")
    smp.set_timesteps(n)
    t = smp.timesteps[k]
    ti, tp = int(t), int(t) - 1000 // n
    ab, ab_p = float(smp.schedule.alphas_cumprod[ti]), float(smp.schedule.alphas_cumprod[tp])
    a, b = ab / ab_p, 1.0 - ab / ab_p
    c0, cx = ab_p**0.5 * b / (1 - ab), a**0.5 * (1 - ab_p) / (1 - ab)
    var = (1 - ab_p) / (1 - ab) * b
    x = _randn(0)
    m = _randn(1, (SHAPE[0], 2 * SHAPE[1]) + SHAPE[2:]) if learned else _randn(1)

    def eager(x, m, noise=None):
        if learned:
            eps, v = m.split(SHAPE[1], dim=1)
            frac = (v + 1) / 2
            std = torch.exp(0.5 * (frac * math.log(b) + (1 - frac) * math.log(var)))
        else:
            eps, std = m, var**0.5
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
        return c0 * x0 + cx * x + std * (torch.randn_like(x) if noise is None else noise)

    ds_step = None
    if d is not None:
        ds = d.DDPMScheduler(clip_sample=False, variance_type="learned_range" if learned else "fixed_small")
        ds.set_timesteps(n)
        ds_step = lambda gen: ds.step(m, t, x, generator=gen).prev_sample  # noqa: E731
    return _stochastic_case(smp, k, t, m, x, eager, ds_step)


def _ddim(d, cfg):
    n, k = 50, 10
    smp = S.DDIMSampler()
    smp.set_timesteps(n)
    t = smp.timesteps[k]
    a_t = float(smp.schedule.alphas_cumprod[int(t)])
    a_p = float(smp.schedule.alphas_cumprod[int(t) - 1000 // n])
    x, c, u = _randn(0), _randn(1), _randn(2)

    def eager(x, c, u):
        eps = u + GUIDANCE * (c - u) if cfg else c
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        return a_p**0.5 * x0 + (1 - a_p) ** 0.5 * eps, x0

    diff = None
    if d is not None:
        ds = d.DDIMScheduler(clip_sample=False)
        ds.set_timesteps(n)

        def diff():
            eps = u + GUIDANCE * (c - u) if cfg else c
            r = ds.step(eps, t, x)
            return r.prev_sample, r.pred_original_sample

    kw = dict(uncond=u, guidance_scale=GUIDANCE) if cfg else {}
    return Case(_stepper(smp, k, t, c, x, **kw), eager, (x, c, u), diff)


def _euler(d, ancestral):
    n, k = 30, 10
    smp = (S.EulerAncestralSampler if ancestral else S.EulerSampler)()
    smp.set_timesteps(n)
    t = smp.timesteps[k]
    s, s_to = float(smp.sigmas[k]), float(smp.sigmas[k + 1])
    if ancestral:
        up = (s_to**2 * (s**2 - s_to**2) / s**2) ** 0.5
        dt = (s_to**2 - up**2) ** 0.5 - s
    else:
        up, dt = 0.0, s_to - s
    x, m = _randn(0), _randn(1)

    def eager(x, m, noise=None):
        x0 = x - s * m
        d_ = (x - x0) / s
        prev = x + d_ * dt
        if ancestral:
            return prev + (torch.randn_like(x) if noise is None else noise) * up
        return prev, x0

    cls = "EulerAncestralDiscreteScheduler" if ancestral else "EulerDiscreteScheduler"
    ds = getattr(d, cls)() if d is not None else None
    if ds is not None:
        ds.set_timesteps(n)
    if not ancestral:
        diff = None
        if ds is not None:
            def diff():
                ds._step_index = k
                r = ds.step(m, t, x)
                return r.prev_sample, r.pred_original_sample
        return Case(_stepper(smp, k, t, m, x), eager, (x, m), diff)
    ds_step = None
    if ds is not None:
        def ds_step(gen):
            ds._step_index = k
            return ds.step(m, t, x, generator=gen).prev_sample

    return _stochastic_case(smp, k, t, m, x, eager, ds_step)


def _heun(d):
    n, k = 30, 10
    smp = S.HeunSampler()
    smp.set_timesteps(n)
    i = 2 * k + 1  # timesteps [t0, t1, t1, t2, t2, ...]: step k's stages are at 2k and 2k + 1
    t = smp.timesteps[i]
    s_hat, s_next = float(smp.sigmas[k]), float(smp.sigmas[k + 1])
    dt = s_next - s_hat
    x_orig, x, m = _randn(0), _randn(1), _randn(2)
    x0_first = _randn(3, scale=0.5)
    d1 = (x_orig - x0_first) / s_hat  # what diffusers keeps from the first stage

    def eager(x, m, x_orig, d1):
        x0 = x - s_next * m
        d2 = (x - x0) / s_next
        return x_orig + (d1 + d2) / 2 * dt, x0

    def setup():
        smp._x_orig, smp._x0_first = x_orig, x0_first

    diff = None
    if d is not None:
        ds = d.HeunDiscreteScheduler(beta_start=1e-4, beta_end=0.02)  # fastgen's default schedule
        ds.set_timesteps(n)

        def diff():
            ds._step_index = i
            ds.prev_derivative, ds.dt, ds.sample = d1, dt, x_orig
            r = ds.step(m, t, x)
            return r.prev_sample, r.pred_original_sample

    return Case(_stepper(smp, i, t, m, x, setup=setup), eager, (x, m, x_orig, d1), diff)


def _dpmpp(d, order):
    n, k = 20, 10
    smp = S.DPMSolverMultistepSampler(solver_order=order)
    smp.set_timesteps(n)
    t = smp.timesteps[k]
    sig = smp.sigmas.tolist()

    def al_sg(sigma):
        a = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return a, sigma * a

    lam = [math.log(a) - math.log(s_) for a, s_ in map(al_sg, sig[:-1])]
    a_s0, s_s0 = al_sg(sig[k])
    a_t, s_t = al_sg(sig[k + 1])
    h = lam[k + 1] - lam[k]
    r0, r1 = (lam[k] - lam[k - 1]) / h, (lam[k - 1] - lam[k - 2]) / h
    em = math.exp(-h) - 1.0
    x, m = _randn(0), _randn(1)
    m1, m2 = _randn(5, scale=0.5), _randn(6, scale=0.5)  # previous x0 predictions, newest first

    def eager(x, m, m1, m2):
        x0 = (x - s_s0 * m) / a_s0
        if order == 2:  # diffusers' midpoint update
            d1 = (1.0 / r0) * (x0 - m1)
            return (s_t / s_s0) * x - (a_t * em) * x0 - 0.5 * (a_t * em) * d1, x0
        d1_0, d1_1 = (1.0 / r0) * (x0 - m1), (1.0 / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        return ((s_t / s_s0) * x - (a_t * em) * x0 + (a_t * (em / h + 1.0)) * d1
                - (a_t * ((em + h) / h**2 - 0.5)) * d2), x0

    def setup():
        smp._hist = [m1, m2][: order - 1]

    diff = None
    if d is not None:
        ds = d.DPMSolverMultistepScheduler(solver_order=order)
        ds.set_timesteps(n)

        def diff():
            ds._step_index = k
            ds.lower_order_nums = order
            ds.model_outputs = [None, m2, m1][-order:]  # shifted to [.., m1, x0] inside step
            return ds.step(m, t, x).prev_sample, ds.model_outputs[-1]

    return Case(_stepper(smp, k, t, m, x, setup=setup), eager, (x, m, m1, m2), diff)


def _score_sde(d, stochastic):
    n, k = 100, 10
    smp = (S.EulerMaruyamaSampler if stochastic else S.ProbabilityFlowSampler)()
    smp.set_timesteps(n)
    t = smp.timesteps[k]
    sde = smp.sde
    tt = float(t)
    dt = (smp.T - smp.sampling_eps) / n
    beta = float(sde.beta(torch.tensor(tt, dtype=torch.float64)))
    mean, std = (float(v) for v in sde.marginal(torch.tensor(tt, dtype=torch.float64)))
    x, m = _randn(0), _randn(1)
    w = 1.0 if stochastic else 0.5

    def eager(x, m, noise=None):
        score = -m / std
        drift = -0.5 * beta * x - w * beta * score
        prev = x - drift * dt
        if not stochastic:
            return prev, (x - std * m) / mean
        return prev + (beta * dt) ** 0.5 * (torch.randn_like(x) if noise is None else noise)

    if not stochastic:
        return Case(_stepper(smp, k, t, m, x), eager, (x, m))
    diff = None
    try:  # deprecated in diffusers, may go away
        from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler
    except ImportError:
        ScoreSdeVpScheduler = None
    if d is not None and ScoreSdeVpScheduler is not None:
        ds = ScoreSdeVpScheduler(sampling_eps=smp.sampling_eps)
        ds.set_timesteps(n)
        tv = torch.full((SHAPE[0],), tt)
        diff = lambda: ds.step_pred(m, x, tv)[0]  # noqa: E731
    return _stochastic_case(smp, k, t, m, x, eager, diff=diff, diffusers_checked=False,
                            note="diffusers' ScoreSdeVpScheduler steps dt = 1/n on linspace(1, eps, n): timed, not "
                                 "compared")


CASES = {
    "ddpm": lambda d: _ddpm(d, learned=False),
    "ddpm_learned": lambda d: _ddpm(d, learned=True),
    "ddim": lambda d: _ddim(d, cfg=False),
    "ddim_cfg": lambda d: _ddim(d, cfg=True),
    "euler": lambda d: _euler(d, ancestral=False),
    "euler_ancestral": lambda d: _euler(d, ancestral=True),
    "heun": _heun,
    "dpmpp_2m": lambda d: _dpmpp(d, 2),
    "dpmpp_3m": lambda d: _dpmpp(d, 3),
    "euler_maruyama": lambda d: _score_sde(d, stochastic=True),
    "pf_ode": lambda d: _score_sde(d, stochastic=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sampler_step_fp32(benchmark, case):
    dev = torch.device("cpu")
    c = CASES[case](_diffusers())
    baselines = {"eager": lambda: c.eager(*c.args)}
    if c.diffusers is not None:
        baselines["diffusers"] = c.diffusers
    if not getattr(benchmark, "disabled", False):
        torch._dynamo.reset()
        comp = torch.compile(c.eager)
        baselines["compile"] = lambda: comp(*c.args)
    # stochastic steps were compared with shared explicit noise above; timed, each draws its own
    unchecked = tuple(baselines) if c.stochastic else (() if c.diffusers_checked else ("diffusers",))
    info = compare(benchmark, c.fast, baselines, device=dev, group=f"sampler step {case} fp32 {SHAPE}",
                   check_against=None if c.stochastic else "eager", unchecked=unchecked, **TOL)
    info.update(impl=backend.resolve("sampler_update", dev), case=case, shape=list(SHAPE), variant="fastgen-out")
    if c.stochastic:
        info["noise"] = "fastgen: in-kernel Philox; baselines: torch.randn"
    if c.note:
        info["note"] = c.note
    if "diffusers_ms" in info:
        print(f"\n{case}: fastgen {info['fastgen_ms']:.4f} ms, eager {info['eager_ms']:.4f} ms "
              f"({info['speedup_vs_eager']}x), diffusers {info['diffusers_ms']:.4f} ms "
              f"({info['speedup_vs_diffusers']}x)"
              + (f", compile {info['compile_ms']:.4f} ms ({info['speedup_vs_compile']}x)" if "compile_ms" in info
                 else ""))
