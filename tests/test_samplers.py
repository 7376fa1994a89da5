"""Samplers (fastgen.diffusion.samplers) against diffusers' schedulers, step by step.

Both loops get identical model outputs from a fixed smooth fake model ``f(x_in, t)`` evaluated
on each implementation's own (scaled) input, and identical noise for the stochastic samplers.
"""
import math

import pytest
import torch

from fastgen.diffusion import DiscreteSchedule, VESDE, VPSDE, make_schedule
from fastgen.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverMultistepSampler,
    EulerAncestralSampler,
    EulerMaruyamaSampler,
    EulerSampler,
    HeunSampler,
    ProbabilityFlowSampler,
    get_sampler,
)

SHAPE = (2, 3, 8, 8)
RTOL, ATOL = 1e-5, 1e-5


def fake_model(x, t, channels_out=None):
    """A smooth deterministic 'network': depends on the input and the timestep."""
    tt = float(t)
    m = 0.6 * x * math.cos(tt / 400.0) + 0.3 * torch.sin(1.7 * x + tt / 97.0) + 0.05 * math.sin(tt / 50.0)
    if channels_out == "learned":
        return torch.cat([m, torch.tanh(0.8 * x + tt / 700.0)], dim=1)
    return m


def x_init(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run_diffusers(sched, steps, *, learned=False, noise_fn=None, noise_kw=None, steps_kw=None):
    sched.set_timesteps(steps)
    x = x_init() * sched.init_noise_sigma
    traj = []
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        m = fake_model(xin, t, "learned" if learned else None)
        kw = dict(steps_kw or {})
        if noise_kw is not None:
            kw[noise_kw] = noise_fn()
        x = sched.step(m, t, x, return_dict=True, **kw).prev_sample
        traj.append(x)
    return traj


def run_fastgen(sampler, steps, *, learned=False, noise_fn=None, always_noise=False, impl=None, out=False):
    if impl is not None:
        sampler.impl = impl
    sampler.set_timesteps(steps)
    x = x_init() * sampler.init_noise_sigma
    traj = []
    bufs = [torch.empty_like(x) for _ in range(5)]
    for k, t in enumerate(sampler.timesteps):
        x = sampler.prepare_sample(x, t)
        xin = sampler.scale_model_input(x, t)
        m = fake_model(xin, t, "learned" if learned else None)
        noise = None
        if noise_fn is not None and (always_noise or sampler._noisy[k]):
            noise = noise_fn()
        o = None
        if out:  # ping-pong sample buffers, rotating x0 buffers
            xb = bufs[0] if x.data_ptr() != bufs[0].data_ptr() else bufs[1]
            o = (xb, bufs[2 + k % 3])
        res = sampler.step(m, t, x, noise=noise, out=o)
        x = res.prev_sample
        traj.append(x.clone())
    return traj


def assert_traj_close(ours, theirs, rtol=RTOL, atol=ATOL, what=""):
    assert len(ours) == len(theirs), f"{what}: {len(ours)} steps vs {len(theirs)}"
    for k, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b.float(), rtol=rtol, atol=atol, msg=lambda m: f"{what} step {k}: {m}")


def seeded_noise(seed=123):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(SHAPE, generator=g)


# ----------------------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_matches_diffusers(pred, spacing):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(prediction_type=pred, timestep_spacing=spacing)
    ref = diffusers.DDIMScheduler(clip_sample=False, **kw)
    theirs = run_diffusers(ref, 10)
    ours = run_fastgen(DDIMSampler(**kw), 10)
    assert_traj_close(ours, theirs, what=f"ddim {pred} {spacing}")


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta_clip_matches_diffusers(eta, clip):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(clip_sample=clip, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, steps_offset=1, set_alpha_to_one=False)
    theirs = run_diffusers(ref, 8, noise_fn=seeded_noise(), noise_kw="variance_noise", steps_kw={"eta": eta})
    s = DDIMSampler(clip_sample=clip, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    steps_offset=1, set_alpha_to_one=False, eta=eta)
    ours = run_fastgen(s, 8, noise_fn=seeded_noise(), always_noise=True)
    assert_traj_close(ours, theirs, what=f"ddim eta={eta} clip={clip}")


def test_ddim_thresholding_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.9,
                                  sample_max_value=1.5, prediction_type="sample")
    theirs = run_diffusers(ref, 6)
    ours = run_fastgen(DDIMSampler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5,
                                   prediction_type="sample"), 6)
    assert_traj_close(ours, theirs, what="ddim thresholding")


def test_ddim_use_clipped_model_output():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(clip_sample=True, clip_sample_range=0.8)
    theirs = run_diffusers(ref, 6, steps_kw={"use_clipped_model_output": True})
    ours = run_fastgen(DDIMSampler(clip_sample=True, clip_sample_range=0.8, use_clipped_model_output=True), 6)
    assert_traj_close(ours, theirs, what="ddim use_clipped_model_output")


# ----------------------------------------------------------------------------------------- DDPM
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("pred", ["epsilon", "sample", "v_prediction"])
def test_ddpm_matches_diffusers(variance_type, pred):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(clip_sample=False, variance_type=variance_type, prediction_type=pred)
    # diffusers draws randn_tensor(shape, generator) at every step with t > 0
    theirs = run_diffusers(ref, 10, steps_kw={"generator": torch.Generator().manual_seed(7)})
    ours = run_fastgen(DDPMSampler(variance_type=variance_type, prediction_type=pred), 10,
                       noise_fn=seeded_noise(7))
    assert_traj_close(ours, theirs, what=f"ddpm {variance_type} {pred}")


def test_ddpm_learned_range_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(clip_sample=True, variance_type="learned_range", beta_schedule="squaredcos_cap_v2",
                                  steps_offset=1)
    theirs = run_diffusers(ref, 12, learned=True, steps_kw={"generator": torch.Generator().manual_seed(3)})
    s = DDPMSampler(variance_type="learned_range", clip_sample=True, beta_schedule="squaredcos_cap_v2", steps_offset=1)
    ours = run_fastgen(s, 12, learned=True, noise_fn=seeded_noise(3))
    assert_traj_close(ours, theirs, what="ddpm learned_range")


def test_ddpm_learned_range_needs_2c_channels():
    s = DDPMSampler(variance_type="learned_range")
    s.set_timesteps(4)
    x = x_init()
    with pytest.raises(ValueError, match="2 \\* C"):
        s.step(fake_model(x, 0), s.timesteps[0], x)


# ----------------------------------------------------------------------------------------- Euler family
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_euler_matches_diffusers(pred, spacing):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(prediction_type=pred, timestep_spacing=spacing)
    theirs = run_diffusers(diffusers.EulerDiscreteScheduler(**kw), 10)
    ours = run_fastgen(EulerSampler(**kw), 10)
    assert_traj_close(ours, theirs, what=f"euler {pred} {spacing}")


def test_euler_karras_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    theirs = run_diffusers(diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, **kw), 12)
    s = EulerSampler(use_karras_sigmas=True, **kw)
    ours = run_fastgen(s, 12)
    ref = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, **kw)
    ref.set_timesteps(12)
    torch.testing.assert_close(s.timesteps, ref.timesteps, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(s.sigmas.float(), ref.sigmas, rtol=1e-6, atol=0)
    assert_traj_close(ours, theirs, what="euler karras")


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_euler_ancestral_matches_diffusers(pred, spacing):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(prediction_type=pred, timestep_spacing=spacing)
    ref = diffusers.EulerAncestralDiscreteScheduler(**kw)
    theirs = run_diffusers(ref, 10, steps_kw={"generator": torch.Generator().manual_seed(5)})
    ours = run_fastgen(EulerAncestralSampler(**kw), 10, noise_fn=seeded_noise(5), always_noise=True)
    # trailing starts at sigma ~157: fp32 rounding of x ~ 157 is ~1.5e-5 absolute
    atol = 1e-4 if spacing == "trailing" else ATOL
    assert_traj_close(ours, theirs, atol=atol, what=f"euler_ancestral {pred} {spacing}")


# ----------------------------------------------------------------------------------------- Heun
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("karras", [False, True])
def test_heun_matches_diffusers(pred, karras):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(prediction_type=pred, use_karras_sigmas=karras, beta_start=0.00085, beta_end=0.012,
              beta_schedule="scaled_linear")
    theirs = run_diffusers(diffusers.HeunDiscreteScheduler(**kw), 6)
    s = HeunSampler(**kw)
    ours = run_fastgen(s, 6)
    assert len(s.timesteps) == 11
    assert_traj_close(ours, theirs, what=f"heun {pred} karras={karras}")


def test_heun_clip_and_out_buffers_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    theirs = run_diffusers(diffusers.HeunDiscreteScheduler(clip_sample=True, clip_sample_range=1.2,
                                                           beta_start=1e-4, beta_end=0.02), 5)
    ours = run_fastgen(HeunSampler(clip_sample=True, clip_sample_range=1.2), 5, out=True)
    assert_traj_close(ours, theirs, what="heun clip out=")


def test_heun_churn():
    s = HeunSampler(s_churn=2.0, s_noise=1.003)
    s.set_timesteps(6)
    x = x_init() * s.init_noise_sigma
    t = s.timesteps[0]
    with pytest.raises(RuntimeError, match="prepare_sample"):
        s.step(fake_model(x, t), t, x)
    # a full churned loop: the first stage's timestep is sigma_to_t(sigma_hat) > the plain one
    plain = HeunSampler()
    plain.set_timesteps(6)
    assert float(s.timesteps[0]) >= float(plain.timesteps[0]) - 1e-3
    s.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    x = x_init() * s.init_noise_sigma
    for t in s.timesteps:
        x = s.prepare_sample(x, t, generator=g)
        x = s.step(fake_model(s.scale_model_input(x, t), t), t, x).prev_sample
    assert torch.isfinite(x).all()

    # reference: Karras et al. Alg. 2 written out in plain torch (same churn noise)
    def reference():
        sig = s.sigmas.tolist()
        n = len(sig) - 1
        g2 = torch.Generator().manual_seed(0)
        x = x_init() * s.init_noise_sigma
        log_t = s._tables.log_sigmas
        from fastgen.diffusion.samplers import _sigma_to_t
        for k in range(n):
            si, sn = sig[k], sig[k + 1]
            gamma = min(2.0 / n, 2**0.5 - 1)
            sh = si * (1 + gamma)
            x = x + math.sqrt(sh**2 - si**2) * 1.003 * torch.randn(x.shape, generator=g2)
            th = float(_sigma_to_t(torch.tensor([sh]), log_t).float())
            d = (x - (x - sh * fake_model(x / math.sqrt(sh**2 + 1), th))) / sh
            if sn == 0:
                x = x + d * (sn - sh)
                continue
            x1 = x + d * (sn - sh)
            tn = float(s.timesteps[2 * k + 1])
            d2 = (x1 - (x1 - sn * fake_model(x1 / math.sqrt(sn**2 + 1), tn))) / sn
            x = x + (sn - sh) * 0.5 * (d + d2)
        return x

    torch.testing.assert_close(x, reference(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------- DPM-Solver++
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_matches_diffusers(order, pred, steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DPMSolverMultistepScheduler(solver_order=order, prediction_type=pred)
    theirs = run_diffusers(ref, steps)
    ours = run_fastgen(DPMSolverMultistepSampler(solver_order=order, prediction_type=pred), steps, out=(steps == 8))
    assert_traj_close(ours, theirs, rtol=2e-5, atol=2e-5, what=f"dpm++ {order}M {pred} steps={steps}")


@pytest.mark.parametrize("order", [2, 3])
def test_dpmpp_karras_thresholding_matches_diffusers(order):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(solver_order=order, use_karras_sigmas=True, thresholding=True, sample_max_value=1.2,
              beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
    theirs = run_diffusers(diffusers.DPMSolverMultistepScheduler(**kw), 10)
    s = DPMSolverMultistepSampler(**kw)
    ours = run_fastgen(s, 10)
    ref = diffusers.DPMSolverMultistepScheduler(**kw)
    ref.set_timesteps(10)
    assert s.timesteps.tolist() == ref.timesteps.tolist()
    assert_traj_close(ours, theirs, rtol=2e-5, atol=2e-5, what=f"dpm++ {order}M karras thresholding")


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_dpmpp_spacings_match_diffusers(spacing):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing, steps_offset=1)
    theirs = run_diffusers(ref, 10)
    s = DPMSolverMultistepSampler(timestep_spacing=spacing, steps_offset=1)
    ours = run_fastgen(s, 10)
    assert s.timesteps.tolist() == ref.timesteps.tolist()
    assert_traj_close(ours, theirs, rtol=2e-5, atol=2e-5, what=f"dpm++ {spacing}")


# ----------------------------------------------------------------------------------------- impls
@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m",
                                  "euler_maruyama", "pf_ode"])
def test_torch_impl_matches_default(name):
    kw = {"eta": 0.7} if name == "ddim" else {}
    a = run_fastgen(get_sampler(name, **kw), 6, noise_fn=seeded_noise(1), always_noise=True)
    b = run_fastgen(get_sampler(name, impl="torch", **kw), 6, noise_fn=seeded_noise(1), always_noise=True)
    assert_traj_close(a, b, rtol=1e-5, atol=1e-5, what=f"{name} cpp vs torch")


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "euler_maruyama"])
def test_in_kernel_noise_is_seeded_by_generator(name):
    def run(seed, impl=None):
        s = get_sampler(name, impl=impl)
        s.set_timesteps(5)
        g = torch.Generator().manual_seed(seed)
        x = x_init() * s.init_noise_sigma
        for t in s.timesteps:
            x = s.step(fake_model(s.scale_model_input(x, t), t), t, x, generator=g).prev_sample
        return x

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(run(1, impl="torch"), a, rtol=1e-5, atol=1e-5)


def test_guidance_is_fused():
    s = DDIMSampler()
    s.set_timesteps(4)
    x = x_init()
    t = s.timesteps[0]
    c, u = fake_model(x, t), fake_model(x * 0.5, t)
    a = s.step(c, t, x, uncond=u, guidance_scale=4.0)
    s.set_timesteps(4)
    b = s.step(u + 4.0 * (c - u), t, x)
    torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-5, atol=1e-5)


def test_return_dict_false_and_out_in_place():
    s = EulerSampler()
    s.set_timesteps(4)
    x = x_init() * s.init_noise_sigma
    t = s.timesteps[0]
    m = fake_model(s.scale_model_input(x, t), t)
    want = s.step(m, t, x.clone())
    s.set_timesteps(4)
    x0 = torch.empty_like(x)
    res = s.step(m, t, x, out=(x, x0), return_dict=False)
    assert isinstance(res, tuple) and res[0] is x and res[1] is x0
    torch.testing.assert_close(res[0], want.prev_sample)


def test_dpmpp3_out_aliasing_history_is_safe():
    """out[1] = the previous x0 (still needed as h2 next step) must not corrupt the result."""
    s1, s2 = DPMSolverMultistepSampler(solver_order=3), DPMSolverMultistepSampler(solver_order=3)
    want = run_fastgen(s1, 8)
    s2.set_timesteps(8)
    x = x_init()
    x0buf = torch.empty_like(x)
    got = []
    for t in s2.timesteps:
        r = s2.step(fake_model(x, t), t, x, out=(x, x0buf))
        x = r.prev_sample
        got.append(x.clone())
    assert_traj_close(got, want, rtol=1e-6, atol=1e-6, what="3M aliasing")


# ----------------------------------------------------------------------------------------- score SDE
def _gaussian_eps(sde, mu, s):
    """Exact eps(x, t) for data N(mu, s^2): x_t ~ N(m mu, m^2 s^2 + std^2)."""
    def model(x, t):
        m, std = (float(v) for v in sde.marginal(torch.tensor(float(t), dtype=torch.float64)))
        return std * (x - m * mu) / (m * m * s * s + std * std)
    return model


@pytest.mark.parametrize("cls", [EulerMaruyamaSampler, ProbabilityFlowSampler])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0)], ids=["vp", "ve"])
def test_sde_samplers_sample_the_gaussian(cls, sde):
    mu, s = 0.7, 0.4
    model = _gaussian_eps(sde, mu, s)
    smp = cls(sde)
    smp.set_timesteps(300)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g, dtype=torch.float32) * smp.init_noise_sigma
    for t in smp.timesteps:
        x = smp.step(model(x, t), t, x, generator=g).prev_sample
    n = x.numel()
    # statistical tolerance: a few standard errors plus discretisation error
    assert abs(x.mean().item() - mu) < 4 * s / n**0.5 + 0.02, x.mean().item()
    assert abs(x.std().item() - s) < 0.03, x.std().item()


def test_sde_sampler_accepts_linear_discrete_schedule():
    smp = get_sampler("euler_maruyama", make_schedule("linear"))
    assert isinstance(smp.sde, VPSDE) and abs(smp.sde.beta_max - 20.0) < 1e-4
    with pytest.raises(ValueError, match="linear"):
        get_sampler("pf_ode", make_schedule("cosine"))


# ----------------------------------------------------------------------------------------- API / errors
def test_registry_and_errors():
    assert set(SAMPLERS) == {"ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m",
                             "euler_maruyama", "pf_ode"}
    assert get_sampler("dpmpp_3m").solver_order == 3
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("plms")
    with pytest.raises(TypeError, match="bogus"):
        get_sampler("ddim", bogus=1)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(eta=2.0)
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMSampler(prediction_type="eps")
    with pytest.raises(ValueError, match="variance_type"):
        DDPMSampler(variance_type="learned")
    with pytest.raises(ValueError, match="timestep_spacing"):
        EulerSampler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepSampler(solver_order=4)
    with pytest.raises(TypeError, match="schedule"):
        DDIMSampler("linear")
    with pytest.raises(TypeError, match="not both"):
        DDIMSampler(make_schedule(), beta_end=0.01)
    with pytest.raises(ValueError, match="prediction_type"):
        EulerAncestralSampler(prediction_type="sample")
    with pytest.raises(TypeError, match="num_inference_steps"):
        DDIMSampler().set_timesteps(2.5)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        DDIMSampler().step(x_init(), 10, x_init())
    s = DDIMSampler()
    s.set_timesteps(2)
    x = x_init()
    with pytest.raises(ValueError, match="not one of"):
        s.step(x, 3, x)
    for t in s.timesteps:
        x = s.step(fake_model(x, t), t, x).prev_sample
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, None, x)
    with pytest.raises(ValueError, match="shape"):
        s.set_timesteps(2)
        s.step(torch.zeros(2, 3, 4, 4), s.timesteps[0], x)
    with pytest.raises(ValueError, match="v_prediction"):
        DDIMSampler(make_schedule(rescale_zero_terminal_snr=True), timestep_spacing="trailing").set_timesteps(5)
    with pytest.raises(TypeError):
        EulerMaruyamaSampler("vp")
    for spacing in ("linspace", "leading"):  # more steps than distinct training timesteps
        with pytest.raises(ValueError, match="num_inference_steps=1000 is too many"):
            DPMSolverMultistepSampler(timestep_spacing=spacing).set_timesteps(1000)
    DPMSolverMultistepSampler(timestep_spacing="trailing").set_timesteps(1000)


def test_zero_terminal_snr_v_prediction_runs():
    sched = make_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_zero_terminal_snr=True)
    for cls in (DDIMSampler, DDPMSampler):
        s = cls(sched, prediction_type="v_prediction", timestep_spacing="trailing")
        out = run_fastgen(s, 5, noise_fn=seeded_noise(), always_noise=True)
        assert torch.isfinite(out[-1]).all()


def test_step_resyncs_on_skipped_timesteps():
    """A host timestep that does not match the internal counter re-synchronises it (img2img)."""
    a = DDIMSampler()
    a.set_timesteps(10)
    x = x_init()
    t = a.timesteps[4]
    r1 = a.step(fake_model(x, t), t, x)
    b = DDIMSampler()
    b.set_timesteps(10)
    b.step(fake_model(x, b.timesteps[0]), b.timesteps[0], x)
    r2 = b.step(fake_model(x, t), int(t), x)
    assert b.step_index == 5
    torch.testing.assert_close(r1.prev_sample, r2.prev_sample)


def test_custom_schedule_object():
    sched = DiscreteSchedule(torch.linspace(1e-4, 0.02, 200, dtype=torch.float64))
    s = DDIMSampler(sched)
    s.set_timesteps(7)
    assert s.timesteps.tolist() == sched.timesteps(7).tolist()


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_heun_spacings_match_diffusers(spacing):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0, beta_start=1e-4,
              beta_end=0.02)
    ref = diffusers.HeunDiscreteScheduler(**kw)
    theirs = run_diffusers(ref, 5)
    s = HeunSampler(**kw)
    ours = run_fastgen(s, 5)
    assert s.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    assert_traj_close(ours, theirs, atol=1e-4 if spacing == "trailing" else ATOL, what=f"heun {spacing}")


@pytest.mark.parametrize("order,lower_order_final", [(1, True), (3, False), (2, False)])
def test_dpmpp_orders_match_diffusers(order, lower_order_final):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(solver_order=order, lower_order_final=lower_order_final)
    theirs = run_diffusers(diffusers.DPMSolverMultistepScheduler(**kw), 7)
    ours = run_fastgen(DPMSolverMultistepSampler(**kw), 7)
    assert_traj_close(ours, theirs, rtol=2e-5, atol=2e-5, what=f"dpm++ order={order} lof={lower_order_final}")
