"""Noise schedules (fastgen.diffusion.schedules): diffusers parity, identities, SDEs, errors.

The diffusers comparisons are skipped when diffusers is not installed. Tables are compared
EXACTLY (torch.equal after converting diffusers' float32 tensors to float64): fastgen evaluates
the built-in beta schedules, 1 - betas and the cumprod in float32 exactly as diffusers does and
only then stores float64, so there is nothing to round differently. Euler sigmas are compared
with a float32-sized tolerance because diffusers computes its sigma table in float32 while
fastgen computes it in float64 from the same alphas_cumprod.
"""
import math

import numpy as np
import pytest
import torch

from fastgen.diffusion import (
    VESDE,
    VPSDE,
    DiscreteSchedule,
    exponential_sigmas,
    karras_sigmas,
    make_schedule,
)

SD = dict(beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's scaled_linear config

# (kind, T, beta_start, beta_end)
CONFIGS = [
    ("linear", 1000, 1e-4, 0.02),
    ("linear", 10, 1e-4, 0.02),
    ("linear", 37, 1e-3, 0.05),
    ("scaled_linear", 1000, 0.00085, 0.012),
    ("scaled_linear", 50, 1e-4, 0.02),
    ("cosine", 1000, 1e-4, 0.02),
    ("cosine", 4, 1e-4, 0.02),
    ("cosine", 333, 1e-4, 0.02),
    ("sigmoid", 1000, 1e-4, 0.02),
    ("sigmoid", 100, 1e-3, 0.03),
]
DIFFUSERS_NAME = {"cosine": "squaredcos_cap_v2"}


def _diffusers():
    return pytest.importorskip("diffusers", exc_type=ImportError)


def _f64(x):
    return torch.as_tensor(np.asarray(x)).to(torch.float64)


# ------------------------------------------------------------------ diffusers parity: tables
@pytest.mark.parametrize("kind,T,b0,b1", CONFIGS)
def test_tables_equal_diffusers_ddpm(kind, T, b0, b1):
    d = _diffusers()
    ref = d.DDPMScheduler(
        num_train_timesteps=T, beta_start=b0, beta_end=b1, beta_schedule=DIFFUSERS_NAME.get(kind, kind)
    )
    s = make_schedule(kind, T, b0, b1)
    assert s.kind == kind and s.num_train_timesteps == T
    for name in ("betas", "alphas", "alphas_cumprod"):
        ours, theirs = getattr(s, name), getattr(ref, name)
        assert ours.dtype == torch.float64 and ours.shape == (T,)
        assert torch.equal(ours, theirs.to(torch.float64)), name
    # custom betas taken from diffusers (float32) reproduce the same tables
    c = make_schedule("custom", betas=ref.betas)
    assert c.kind == "custom" and torch.equal(c.alphas_cumprod, ref.alphas_cumprod.double())


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_rescale_zero_terminal_snr_equals_diffusers(kind):
    d = _diffusers()
    kw = SD if kind == "scaled_linear" else {}
    ref = d.DDIMScheduler(beta_schedule=DIFFUSERS_NAME.get(kind, kind), rescale_betas_zero_snr=True, **kw)
    base = make_schedule(kind, **kw)
    for s in (base.rescale_zero_terminal_snr(), make_schedule(kind, rescale_zero_terminal_snr=True, **kw)):
        assert torch.equal(s.betas, ref.betas.double())
        assert torch.equal(s.alphas_cumprod, ref.alphas_cumprod.double())
        assert s.alphas_cumprod[-1] == 0 and s.betas[-1] == 1 and s.zero_terminal_snr
        assert s.sigmas[-1] == math.inf and s.snr[-1] == 0 and s.log_snr[-1] == -math.inf
        assert s.kind == kind
        torch.testing.assert_close(s.alphas_cumprod[0], base.alphas_cumprod[0], rtol=1e-6, atol=0)
    assert not base.zero_terminal_snr


# ------------------------------------------------------------------ diffusers parity: timesteps
@pytest.mark.parametrize("T", [17, 100, 1000])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("trailing", 1), ("linspace", 0), ("linspace", 1)])
def test_timesteps_equal_diffusers_ddim(T, spacing, offset):
    d = _diffusers()
    ref = d.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    s = make_schedule("linear", T)
    n_extra = 0
    for n in range(1, T + 1):  # every n: this is cheap
        ref.set_timesteps(n)
        theirs = ref.timesteps.to(torch.long)
        if spacing == "leading" and int(theirs[0]) > T - 1:
            # diffusers silently returns an out-of-range timestep here; fastgen refuses
            with pytest.raises(ValueError, match="steps_offset"):
                s.timesteps(n, spacing, steps_offset=offset)
            continue
        ours = s.timesteps(n, spacing, steps_offset=offset)
        assert ours.dtype == torch.long and ours.shape == (n,)
        assert bool((ours[:-1] > ours[1:]).all()), "descending"
        assert int(ours.min()) >= 0 and int(ours.max()) <= T - 1
        if spacing == "trailing" and len(theirs) == n + 1:
            # numpy float arange overshoot in diffusers: a spurious trailing -1
            assert int(theirs[-1]) == -1
            theirs = theirs[:n]
            n_extra += 1
        assert torch.equal(ours, theirs), (T, n)
    if spacing == "trailing" and T == 1000:
        assert n_extra > 0  # the overshoot case was exercised (e.g. n=61)


def test_timesteps_known_values():
    s = make_schedule("scaled_linear", **SD)
    assert s.timesteps(4, "leading", steps_offset=1).tolist() == [751, 501, 251, 1]
    assert s.timesteps(4, "trailing").tolist() == [999, 749, 499, 249]
    assert s.timesteps(4, "linspace").tolist() == [999, 666, 333, 0]
    # numpy/torch round half to even: linspace(0, 999, 3) = [0, 499.5, 999]
    assert s.timesteps(3, "linspace").tolist() == [999, 500, 0]


# ------------------------------------------------------------------ diffusers parity: Euler
# diffusers' Euler set_timesteps trips numpy 2's __array__(copy=...) DeprecationWarning
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("sigmas_kind", ["default", "karras", "exponential"])
def test_euler_sigmas_equal_diffusers(spacing, sigmas_kind):
    d = _diffusers()
    T = 1000
    s = make_schedule("scaled_linear", T, **SD)
    for n in (1, 10, 25, 50):
        ref = d.EulerDiscreteScheduler(
            beta_schedule="scaled_linear", steps_offset=1, timestep_spacing=spacing,
            use_karras_sigmas=sigmas_kind == "karras", use_exponential_sigmas=sigmas_kind == "exponential",
            **SD,
        )
        ref.set_timesteps(n)
        if spacing == "linspace":  # Euler does not round this spacing
            ts = torch.from_numpy(np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy())
        else:
            ts = s.timesteps(n, spacing, steps_offset=1)
        sig = s.t_to_sigma(ts)
        assert ref.sigmas[-1] == 0 and len(ref.sigmas) == n + 1
        if sigmas_kind == "default":
            torch.testing.assert_close(ts.double(), ref.timesteps.double(), rtol=0, atol=0)
            expected = sig
        else:
            fn = karras_sigmas if sigmas_kind == "karras" else exponential_sigmas
            if n == 1:
                continue  # sigma_min == sigma_max: not a valid range
            expected = fn(n, sig[-1].item(), sig[0].item())
            # timesteps of a custom sigma schedule come from sigma_to_t (log-sigma interpolation)
            torch.testing.assert_close(s.sigma_to_t(expected), ref.timesteps.double(), rtol=0, atol=2e-4)
        # diffusers' sigma table is computed in float32
        torch.testing.assert_close(expected, ref.sigmas[:-1].double(), rtol=3e-6, atol=0)


def test_sigma_to_t_and_t_to_sigma_equal_diffusers_helpers():
    d = _diffusers()
    ref = d.EulerDiscreteScheduler(beta_schedule="scaled_linear", **SD)
    s = make_schedule("scaled_linear", **SD)
    log_sigmas = np.log(s.sigmas.numpy())  # same float64 table on both sides
    g = torch.Generator().manual_seed(0)
    sig = torch.exp(torch.empty(500, dtype=torch.float64).uniform_(-5, 4, generator=g))  # incl. out of range
    sig = torch.cat([sig, s.sigmas[::97], torch.tensor([0.0, 1e-12, 1e6], dtype=torch.float64)])
    theirs = torch.from_numpy(ref._sigma_to_t(sig.numpy(), log_sigmas))
    torch.testing.assert_close(s.sigma_to_t(sig), theirs, rtol=0, atol=1e-9)
    t = torch.empty(500, dtype=torch.float64).uniform_(0, 999, generator=g)
    theirs = torch.from_numpy(np.interp(t.numpy(), np.arange(1000), s.sigmas.numpy()))
    torch.testing.assert_close(s.t_to_sigma(t), theirs, rtol=1e-14, atol=0)


# ------------------------------------------------------------------ identities (no diffusers)
@pytest.mark.parametrize("kind,T,b0,b1", CONFIGS)
def test_derived_quantities(kind, T, b0, b1):
    s = make_schedule(kind, T, b0, b1)
    ab = s.alphas_cumprod
    assert bool((s.betas > 0).all()) and bool((s.betas <= 1).all())
    assert bool((ab[1:] < ab[:-1]).all())
    torch.testing.assert_close(s.sqrt_alphas_cumprod ** 2, ab, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sqrt_one_minus_alphas_cumprod ** 2 + ab, torch.ones_like(ab), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sigmas, torch.sqrt((1 - ab) / ab), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.snr, 1 / s.sigmas ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.log_snr, torch.log(s.snr), rtol=1e-12, atol=1e-12)
    for name in ("betas", "alphas", "alphas_cumprod", "sigmas", "snr", "log_snr",
                 "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        assert getattr(s, name).dtype == torch.float64 and getattr(s, name).shape == (T,), name


def test_cosine_schedule_closed_form():
    T, s_ = 1000, 0.008
    s = make_schedule("cosine", T)
    f = lambda u: math.cos((u + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    # away from the cap, alpha_bar follows f(t / T) / f(0) up to the float32 betas
    i = torch.arange(T - 50)
    expect = torch.tensor([f((k + 1) / T) / f(0) for k in i.tolist()], dtype=torch.float64)
    torch.testing.assert_close(s.alphas_cumprod[: T - 50], expect, rtol=1e-4, atol=1e-7)
    assert s.betas.max() <= 0.999 + 1e-7
    capped = make_schedule("cosine", T, max_beta=0.5)
    assert abs(capped.betas.max().item() - 0.5) < 1e-7
    assert make_schedule("squaredcos_cap_v2", T).kind == "cosine"


def test_custom_float64_betas_are_kept_exact():
    b = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    s = make_schedule("custom", betas=b)
    assert torch.equal(s.betas, b) and torch.equal(s.alphas, 1 - b)
    assert torch.equal(s.alphas_cumprod, torch.cumprod(1 - b, 0))
    assert s.num_train_timesteps == 100
    s2 = DiscreteSchedule(b.tolist())
    assert torch.equal(s2.alphas_cumprod, s.alphas_cumprod)
    # a float32 source (tensor or numpy) keeps float32 arithmetic, like diffusers
    s3 = DiscreteSchedule(b.float().numpy())
    assert torch.equal(s3.alphas_cumprod, torch.cumprod(1 - b.float(), 0).double())


def test_alpha_bar():
    s = make_schedule("linear")
    assert s.alpha_bar(-1).item() == 1.0
    assert s.alpha_bar(0).item() == s.alphas_cumprod[0].item()
    assert s.alpha_bar(999).item() == s.alphas_cumprod[999].item()
    t = torch.tensor([[-1, 0], [500, 999]])
    out = s.alpha_bar(t)
    assert out.shape == (2, 2) and out.dtype == torch.float64
    assert out.tolist() == [[1.0, s.alphas_cumprod[0].item()], [s.alphas_cumprod[500].item(), s.alphas_cumprod[999].item()]]
    assert s.alpha_bar(torch.tensor([], dtype=torch.long)).shape == (0,)
    for bad in (-2, 1000, torch.tensor([0, 1000])):
        with pytest.raises(ValueError, match=r"t must be in \[-1, 999\]"):
            s.alpha_bar(bad)
    for bad in (0.5, torch.tensor([1.0]), True):
        with pytest.raises(TypeError, match="t must be"):
            s.alpha_bar(bad)


def test_t_to_sigma_and_sigma_to_t_round_trip():
    for s in (make_schedule("linear"), make_schedule("scaled_linear", **SD), make_schedule("cosine", 100)):
        T = s.num_train_timesteps
        t = torch.arange(T, dtype=torch.float64)
        assert torch.equal(s.t_to_sigma(t), s.sigmas)
        torch.testing.assert_close(s.sigma_to_t(s.sigmas), t, rtol=0, atol=1e-9)
        # fractional t: linear-in-t forward vs log-linear inverse agree within the step
        tf = torch.linspace(0, T - 1, 4001, dtype=torch.float64)
        back = s.sigma_to_t(s.t_to_sigma(tf))
        assert bool((back >= torch.floor(tf) - 1e-9).all()) and bool((back <= torch.ceil(tf) + 1e-9).all())
        assert bool((back[1:] >= back[:-1]).all())
        # clamping outside the table
        assert s.sigma_to_t(0.0).item() == 0 and s.sigma_to_t(s.sigmas[0].item() / 2).item() == 0
        assert s.sigma_to_t(s.sigmas[-1].item() * 2).item() == T - 1
        assert s.sigma_to_t(torch.tensor(3.0)).shape == ()
    z = make_schedule("scaled_linear", rescale_zero_terminal_snr=True, **SD)  # sigmas[-1] = inf
    assert z.t_to_sigma(999.0).item() == math.inf and math.isfinite(z.t_to_sigma(998.0).item())
    assert z.sigma_to_t(math.inf).item() == 999 and z.sigma_to_t(z.sigmas[-2]).item() == 998
    assert not torch.isnan(z.sigma_to_t(torch.logspace(-3, 8, 50, dtype=torch.float64))).any()


def test_karras_and_exponential_sigmas():
    k = karras_sigmas(10, 0.03, 14.6)
    assert k.dtype == torch.float64 and k.shape == (10,)
    assert k[0].item() == 14.6 and k[-1].item() == 0.03  # endpoints pinned exactly
    assert bool((k[1:] < k[:-1]).all())
    i = torch.arange(10, dtype=torch.float64) / 9
    expect = (14.6 ** (1 / 7) + i * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7
    torch.testing.assert_close(k, expect, rtol=1e-14, atol=0)
    torch.testing.assert_close(karras_sigmas(5, 0.1, 10.0, rho=1.0), torch.linspace(10, 0.1, 5, dtype=torch.float64))
    assert karras_sigmas(1, 0.1, 10.0).tolist() == [10.0]
    e = exponential_sigmas(7, 0.01, 100.0)
    assert e.shape == (7,) and e[0].item() == 100.0 and e[-1].item() == 0.01
    assert exponential_sigmas(1, 0.01, 100.0).tolist() == [100.0]
    r = e[1:] / e[:-1]
    torch.testing.assert_close(r, torch.full_like(r, r[0].item()), rtol=1e-13, atol=0)


# ------------------------------------------------------------------ SDEs
def test_vpsde_marginals_closed_form():
    v = VPSDE(0.1, 20.0)
    t = torch.linspace(1e-3, 1, 101, dtype=torch.float64)
    mean, std = v.marginal(t)
    # closed form: log m = -1/2 int_0^t beta = -(t^2 (b1 - b0) / 4 + t b0 / 2)
    closed = -(t ** 2 * 19.9 / 4 + t * 0.1 / 2)
    torch.testing.assert_close(v.log_mean_coeff(t), closed, rtol=1e-14, atol=0)
    torch.testing.assert_close(mean, torch.exp(closed), rtol=1e-14, atol=0)
    torch.testing.assert_close(std, torch.sqrt(1 - torch.exp(2 * closed)), rtol=1e-12, atol=0)
    # ... and against a numerical integral of beta(t)
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)
    integral = torch.cumulative_trapezoid(v.beta(grid), grid)
    idx = (t * 200000).round().long() - 1
    torch.testing.assert_close(v.log_mean_coeff(t), -0.5 * integral[idx], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mean ** 2 + std ** 2, torch.ones_like(t), rtol=1e-14, atol=0)
    torch.testing.assert_close(v.alpha_bar(t), mean ** 2, rtol=1e-14, atol=0)
    torch.testing.assert_close(v.sigma(t), std / mean, rtol=1e-12, atol=0)
    assert v.beta(0.0).item() == 0.1 and abs(v.beta(1.0).item() - 20.0) < 1e-12
    v2 = VPSDE(0.1, 20.0, T=2.0)
    assert abs(v2.beta(2.0).item() - 20.0) < 1e-12 and abs(v2.beta(1.0).item() - 10.05) < 1e-12
    # float32 t stays float32
    assert v.marginal(torch.tensor([0.5], dtype=torch.float32))[1].dtype == torch.float32


def test_vpsde_sde_coefficients():
    v = VPSDE()
    x = torch.randn(3, 2, 4, 4)
    t = torch.tensor([0.1, 0.5, 0.9])
    drift, diff = v.sde(x, t)
    b = (0.1 + t * 19.9).view(3, 1, 1, 1)
    torch.testing.assert_close(drift, -0.5 * b * x)
    torch.testing.assert_close(diff, b.sqrt())
    assert drift.dtype == x.dtype and diff.shape == (3, 1, 1, 1)
    drift, diff = v.sde(x, 0.5)
    assert drift.shape == x.shape and diff.dim() == 0


def test_vpsde_is_the_limit_of_the_discrete_linear_schedule():
    s = make_schedule("linear", 1000, 1e-4, 0.02)
    for v in (VPSDE(0.1, 20.0), VPSDE.from_discrete(s)):
        t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000  # discrete i <-> t = (i + 1) / N
        err = (v.alpha_bar(t) - s.alphas_cumprod).abs().max().item()
        assert err < 1e-3
    v = VPSDE.from_discrete(s)
    assert abs(v.beta_min - 0.1) < 1e-6 and abs(v.beta_max - 20.0) < 1e-5
    with pytest.raises(ValueError, match="schedule"):
        VPSDE.from_discrete(make_schedule("cosine"))


def test_vesde():
    v = VESDE(0.01, 50.0)
    assert abs(v.sigma(0.0).item() - 0.01) < 1e-15 and abs(v.sigma(1.0).item() - 50.0) < 1e-12
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    ones, sig = v.marginal(t)
    assert torch.equal(ones, torch.ones_like(t))
    torch.testing.assert_close(sig, 0.01 * 5000.0 ** t, rtol=1e-13, atol=0)
    x = torch.randn(2, 3)
    drift, g = v.sde(x, torch.tensor([0.2, 0.7]))
    assert torch.equal(drift, torch.zeros_like(x)) and g.shape == (2, 1)
    # g^2 = d sigma^2 / dt
    tt = torch.tensor([0.2, 0.7], dtype=torch.float64)
    h = 1e-6
    dsig2 = (v.sigma(tt + h) ** 2 - v.sigma(tt - h) ** 2) / (2 * h)
    torch.testing.assert_close(v.sde(x.double(), tt)[1].squeeze(1) ** 2, dsig2, rtol=1e-8, atol=0)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(kind="quadratic"), ValueError, "kind"),
        (dict(kind=3), TypeError, "kind"),
        (dict(num_train_timesteps=0), ValueError, "num_train_timesteps"),
        (dict(num_train_timesteps=10.0), TypeError, "num_train_timesteps"),
        (dict(beta_start=0.02, beta_end=0.01), ValueError, "beta_end"),
        (dict(kind="scaled_linear", beta_start=0.01, beta_end=0.01), ValueError, "beta_end"),
        (dict(kind="sigmoid", beta_start=0.0), ValueError, "beta_start"),
        (dict(beta_end=1.5), ValueError, "beta_end"),
        (dict(beta_start=float("nan")), ValueError, "beta_start"),
        (dict(kind="cosine", max_beta=0.0), ValueError, "max_beta"),
        (dict(kind="cosine", cosine_s=-0.1), ValueError, "cosine_s"),
        (dict(kind="custom"), ValueError, "betas"),
        (dict(kind="linear", betas=[0.1, 0.2]), ValueError, "betas"),
        (dict(kind="custom", betas=[]), ValueError, "betas"),
        (dict(kind="custom", betas=[[0.1, 0.2]]), ValueError, "betas"),
        (dict(kind="custom", betas=[0.1, 0.0]), ValueError, "betas"),
        (dict(kind="custom", betas=[0.1, 1.5]), ValueError, "betas"),
        (dict(kind="custom", betas=[0.1, float("nan")]), ValueError, "betas"),
        (dict(kind="custom", betas="abc"), TypeError, "betas"),
    ],
)
def test_make_schedule_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_schedule(**kwargs)


def test_schedule_method_errors():
    s = make_schedule("linear", 100)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.timesteps(101)
    with pytest.raises(TypeError, match="num_inference_steps"):
        s.timesteps(2.0)
    with pytest.raises(ValueError, match="spacing"):
        s.timesteps(10, "karras")
    with pytest.raises(ValueError, match="steps_offset"):
        s.timesteps(10, steps_offset=-1)
    with pytest.raises(ValueError, match="steps_offset"):
        s.timesteps(100, "leading", steps_offset=1)
    with pytest.raises(ValueError, match="sigma"):
        s.sigma_to_t(-1.0)
    with pytest.raises(ValueError, match="sigma"):
        s.sigma_to_t(float("nan"))
    with pytest.raises(ValueError, match=r"t must be in \[0, 99\]"):
        s.t_to_sigma(99.5)
    with pytest.raises(ValueError, match=r"t must be in \[0, 99\]"):
        s.t_to_sigma(torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="num_train_timesteps"):
        make_schedule("linear", 1).rescale_zero_terminal_snr()


@pytest.mark.parametrize(
    "fn,args,match",
    [
        (karras_sigmas, (0, 0.1, 10.0), "n"),
        (karras_sigmas, (5, 0.0, 10.0), "sigma_min"),
        (karras_sigmas, (5, 1.0, 1.0), "sigma_max"),
        (karras_sigmas, (5, 1.0, 10.0, 0.0), "rho"),
        (exponential_sigmas, (5, -1.0, 10.0), "sigma_min"),
        (exponential_sigmas, (5, 10.0, 1.0), "sigma_max"),
        (VESDE, (0.0, 50.0), "sigma_min"),
        (VESDE, (1.0, 0.5), "sigma_max"),
        (VPSDE, (-0.1, 20.0), "beta_min"),
        (VPSDE, (1.0, 0.5), "beta_max"),
        (VPSDE, (0.1, 20.0, 0.0), "T"),
    ],
)
def test_sigma_and_sde_errors(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)
