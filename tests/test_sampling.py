"""The sampling loop fastgen.diffusion.sample / fastgen.sample."""

import pytest
import torch

import fastgen
from fastgen.diffusion import DDIMSampler, DDPMSampler, NonFiniteSampleError, make_schedule, sample
from fastgen.diffusion.samplers import get_sampler

SHAPE = (2, 3, 8, 8)


class CountingModel(torch.nn.Module):
    """A smooth fake eps-model that records its calls; the label shifts the output."""

    def __init__(self, channels_out=3, num_classes=None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = []
        self.channels_out = channels_out

    def forward(self, x, t, class_labels=None, **kw):
        self.calls.append((tuple(x.shape), t.clone(), None if class_labels is None else class_labels.clone(), kw))
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        out = self.scale * torch.sin(x + tt / 300.0)
        if class_labels is not None:
            out = out + 0.01 * class_labels.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        if self.channels_out != x.shape[1]:
            out = torch.cat([out, torch.tanh(x)], dim=1)
        return out


def manual_loop(model, sampler, x, labels=None, guidance=1.0, null=None):
    sampler.set_timesteps(sampler.num_inference_steps)
    for t in sampler.timesteps:
        xin = sampler.scale_model_input(x, t)
        tb = t.reshape(1).expand(x.shape[0])
        if guidance != 1.0:
            c = model(xin, tb, class_labels=labels)
            u = model(xin, tb, class_labels=torch.full_like(labels, null))
            m = u + guidance * (c - u)
        else:
            m = model(xin, tb, class_labels=labels) if labels is not None else model(xin, tb)
        x = sampler.step(m, t, x).prev_sample
    return x


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "pf_ode"])
def test_sample_matches_manual_loop(name):
    model = CountingModel()
    g = torch.Generator().manual_seed(0)
    x = sample(model, SHAPE, sampler=name, steps=6, generator=g, progress=False)
    s = get_sampler(name)
    s.set_timesteps(6)
    x_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
    ref = manual_loop(model, s, x_ref)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_cfg_batches_cond_and_uncond_in_one_forward():
    model = CountingModel()
    labels = torch.tensor([3, 5])
    x = sample(model, SHAPE, sampler="ddim", steps=5, guidance_scale=3.0, class_labels=labels, null_label=10,
               generator=torch.Generator().manual_seed(1), progress=False)
    assert len(model.calls) == 5  # one forward per step
    for shape, t, lab, _ in model.calls:
        assert shape == (4,) + SHAPE[1:]
        assert lab.tolist() == [3, 5, 10, 10]
        assert t.shape == (4,) and len(set(t.tolist())) == 1
    # equals the unbatched two-forward guidance loop
    model2 = CountingModel()
    s = DDIMSampler()
    s.set_timesteps(5)
    x_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ref = manual_loop(model2, s, x_ref, labels=labels, guidance=3.0, null=10)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_cfg_with_learned_range_ddpm_and_model_kwargs():
    model = CountingModel(channels_out=6)
    extra = torch.ones(SHAPE[0], 4)
    x = sample(model, SHAPE, sampler="ddpm", steps=4, guidance_scale=2.0, class_labels=1, null_label=0,
               sampler_kwargs={"variance_type": "learned_range"}, model_kwargs={"extra": extra, "flag": True},
               generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.isfinite(x).all() and x.shape == SHAPE
    _, _, lab, kw = model.calls[0]
    assert lab.tolist() == [1, 1, 0, 0]
    assert kw["extra"].shape == (4, 4) and kw["flag"] is True


def test_learned_sigma_channels_dropped_for_other_samplers():
    model = CountingModel(channels_out=6)
    x = sample(model, SHAPE, sampler="ddim", steps=3, progress=False)
    assert x.shape == SHAPE


def test_determinism_with_seeded_generator():
    model = CountingModel()
    kw = dict(sampler="euler_ancestral", steps=5, progress=False)
    a = sample(model, SHAPE, generator=torch.Generator().manual_seed(42), **kw)
    b = sample(model, SHAPE, generator=torch.Generator().manual_seed(42), **kw)
    c = sample(model, SHAPE, generator=torch.Generator().manual_seed(43), **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_progress_bar_on_and_off(capsys):
    model = CountingModel()
    sample(model, SHAPE, steps=3, progress=False)
    assert "sampling" not in capsys.readouterr().err
    sample(model, SHAPE, steps=3, progress=True)
    assert "sampling" in capsys.readouterr().err


def test_nan_error_names_the_step():
    class Bad(CountingModel):
        def forward(self, x, t, **kw):
            out = super().forward(x, t, **kw)
            if int(t[0]) < 500:
                out = out * float("nan")
            return out

    with pytest.raises(NonFiniteSampleError, match=r"step 5 \(timestep 400\)"):
        sample(Bad(), SHAPE, sampler="ddim", steps=10, progress=False)
    with pytest.raises(FloatingPointError):
        sample(Bad(), SHAPE, sampler="ddim", steps=10, progress=False)


def test_return_intermediates_and_schedule():
    model = CountingModel()
    sched = make_schedule("cosine", 200)
    x, inter = sample(model, SHAPE, sampler="ddpm", steps=4, schedule=sched, return_intermediates=True,
                      progress=False, generator=torch.Generator().manual_seed(0))
    assert len(inter["samples"]) == 4 and len(inter["pred_original_samples"]) == 4
    assert inter["timesteps"] == DDPMSampler(sched).schedule.timesteps(4).tolist()
    assert torch.equal(inter["samples"][-1], x)
    # distinct tensors (no buffer reuse when intermediates are returned)
    assert len({t.data_ptr() for t in inter["samples"]}) == 4


def test_buffer_reuse_does_not_change_results():
    model = CountingModel()
    for name in ("heun", "dpmpp_3m", "ddpm"):
        kw = dict(sampler=name, steps=5, progress=False)
        a = sample(model, SHAPE, generator=torch.Generator().manual_seed(3), **kw)
        b, _ = sample(model, SHAPE, generator=torch.Generator().manual_seed(3), return_intermediates=True, **kw)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_heun_churn_in_loop():
    model = CountingModel()
    x = sample(model, SHAPE, sampler="heun", steps=4, sampler_kwargs={"s_churn": 1.0}, progress=False,
               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_fastgen_sample_alias_and_sampler_object():
    assert fastgen.sample is sample
    model = CountingModel()
    s = DDIMSampler(eta=0.5)
    x = fastgen.sample(model, SHAPE, sampler=s, steps=3, progress=False)
    assert x.shape == SHAPE


def test_bad_arguments():
    model = CountingModel()
    with pytest.raises(ValueError, match="null_label"):
        sample(model, SHAPE, guidance_scale=2.0, class_labels=[1, 2], progress=False)
    with pytest.raises(ValueError, match="class_labels"):
        sample(model, SHAPE, guidance_scale=2.0, null_label=0, progress=False)
    with pytest.raises(ValueError, match="class_labels"):
        sample(model, SHAPE, class_labels=torch.tensor([1, 2, 3]), progress=False)
    with pytest.raises(TypeError, match="shape"):
        sample(model, "2x3", progress=False)
    with pytest.raises(ValueError, match="steps"):
        sample(model, SHAPE, steps=0, progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(model, SHAPE, sampler="nope", progress=False)
    with pytest.raises(ValueError, match="sampler object"):
        sample(model, SHAPE, sampler=DDIMSampler(), schedule=make_schedule(), progress=False)
    with pytest.raises(TypeError, match="guidance_scale"):
        sample(model, SHAPE, guidance_scale=float("nan"), progress=False)
    with pytest.raises(TypeError, match="generator"):
        sample(model, SHAPE, generator=0, progress=False)


def test_cuda_graph_needs_a_cuda_device():
    model = CountingModel()
    with pytest.raises(ValueError, match="cuda_graph"):
        sample(model, SHAPE, steps=3, progress=False, cuda_graph=True)  # a CPU model
    with pytest.raises(ValueError, match="cuda_graph"):
        sample(model, SHAPE, steps=3, progress=False, cuda_graph=True, device="cpu")
    with pytest.raises(TypeError, match="cuda_graph"):
        sample(model, SHAPE, steps=3, progress=False, cuda_graph="yes")
    assert len(model.calls) == 0  # rejected before any model call
    # cuda_graph=False is the default eager loop
    torch.testing.assert_close(sample(model, SHAPE, steps=3, progress=False, cuda_graph=False,
                                      generator=torch.Generator().manual_seed(0)),
                               sample(model, SHAPE, steps=3, progress=False, generator=torch.Generator().manual_seed(0)),
                               rtol=0, atol=0)


def test_cuda_graph_support_table():
    """Which samplers the CUDA-graph path captures (the rest fall back to eager with a warning);
    the per-step device rows it replays hold each step's coefficients, scale and timestep."""
    from fastgen.diffusion.sampling import _graph_unsupported, _step_table

    for name in ("ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m", "euler_maruyama",
                 "pf_ode"):
        s = get_sampler(name)
        s.set_timesteps(5)
        assert _graph_unsupported(s) is None, name
        tab = _step_table(s, torch.device("cpu"))
        assert tab.shape == (len(s.timesteps), 15) and tab.dtype == torch.float32
        torch.testing.assert_close(tab[:, :12], torch.stack(s._rows).float(), rtol=0, atol=0)
        assert tab[:, 13].tolist() == [float(torch.tensor(t, dtype=torch.float32)) for t in s._ts_host]
        assert tab[:, 14].tolist() == list(range(len(s.timesteps)))
        if s._in_scale is not None:  # eager CUDA's x / s multiplies by the fp32 reciprocal
            want = [float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(v, dtype=torch.float32))
                    for v in s._in_scale]
            assert tab[:, 12].tolist() == want
        else:
            assert tab[:, 12].tolist() == [1.0] * len(s.timesteps)
    churn = get_sampler("heun", s_churn=1.0)
    churn.set_timesteps(5)
    assert "churn" in _graph_unsupported(churn)
    thr = DDIMSampler(thresholding=True)
    thr.set_timesteps(5)
    assert "thresholding" in _graph_unsupported(thr)

    class MyDDIM(DDIMSampler):
        pass

    mine = MyDDIM()
    mine.set_timesteps(5)
    assert "MyDDIM" in _graph_unsupported(mine)


# ---------------------------------------------------------------------------------------------
# the CUDA-graph loop's buffer logic, on CPU: the capture helpers are replaced by fakes whose
# "graph" re-runs the captured step function at each replay (static buffers, device-side row
# table, history shifts, Heun's two graphs, the finiteness flag); the real capture is tested in
# tests/test_gpu.py
# ---------------------------------------------------------------------------------------------
class _FakeGraph:
    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


@pytest.fixture
def fake_graphs(monkeypatch):
    from fastgen.diffusion import sampling

    monkeypatch.setattr(sampling, "_GRAPH_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(sampling, "_warmup", lambda device, fn, times: [fn() for _ in range(times)])
    monkeypatch.setattr(sampling, "_capture", lambda device, fn, generator: _FakeGraph(fn))


@pytest.mark.parametrize("name,kw", [
    ("ddim", {}),
    ("ddim", {"guidance_scale": 3.0, "class_labels": [1, 2], "null_label": 0}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("euler", {}),
    ("heun", {}),
    ("pf_ode", {}),
    ("ddpm", {"steps": 1}),  # one step at t = 0: deterministic
])
def test_graph_loop_logic_matches_eager(fake_graphs, name, kw):
    kw = dict(kw)
    steps = kw.pop("steps", 7)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    model = CountingModel()
    common = dict(sampler=name, steps=steps, initial_noise=x0, progress=False, return_intermediates=True, **kw)
    xe, ie = sample(model, SHAPE, **common)
    model.calls.clear()
    xg, ig = sample(model, SHAPE, cuda_graph=True, **common)
    n_graphs = 2 if name == "heun" else 1
    # 3 warm-up calls per graph, then (the fake graph re-running the step) one per step
    assert len(model.calls) == 3 * n_graphs + len(ie["timesteps"])
    # the model saw the eager timesteps (the device table round-trips them exactly)
    assert [float(c[1][0]) for c in model.calls[3 * n_graphs:]] == ie["timesteps"]
    torch.testing.assert_close(xg, xe, rtol=1e-5, atol=1e-5)
    assert ig["timesteps"] == ie["timesteps"]
    for a, b in zip(ig["samples"] + ig["pred_original_samples"], ie["samples"] + ie["pred_original_samples"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(ig["samples"][-1], xg)
    x_plain = sample(model, SHAPE, cuda_graph=True, **{k: v for k, v in common.items() if k != "return_intermediates"})
    torch.testing.assert_close(x_plain, xe, rtol=1e-5, atol=1e-5)


def test_graph_loop_model_inputs(fake_graphs):
    model = CountingModel()
    sample(model, SHAPE, sampler="euler", steps=4, guidance_scale=2.0, class_labels=[3, 4], null_label=9,
           progress=False, cuda_graph=True)
    shape, t, lab, _ = model.calls[-1]
    assert shape == (4,) + SHAPE[1:]
    assert t.dtype == torch.float32 and t.shape == (4,)
    assert lab.tolist() == [3, 4, 9, 9]


@pytest.mark.parametrize("name,skw", [("ddpm", {}), ("ddpm", {"variance_type": "learned_range"}),
                                      ("euler_ancestral", {}), ("ddim", {"eta": 1.0}), ("euler_maruyama", {})])
def test_graph_loop_stochastic_reproducible(fake_graphs, name, skw):
    model = CountingModel(channels_out=6 if skw.get("variance_type") == "learned_range" else 3)

    def run(seed):
        return sample(model, SHAPE, sampler=name, steps=5, sampler_kwargs=skw, progress=False, cuda_graph=True,
                      generator=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_graph_loop_nonfinite_names_the_step(fake_graphs):
    class Bad(CountingModel):
        def forward(self, x, t, **kw):
            out = super().forward(x, t, **kw)
            return torch.where(t.reshape(-1, 1, 1, 1) < 500, out * float("nan"), out)

    with pytest.raises(NonFiniteSampleError, match=r"step 5 \(timestep 400\)"):
        sample(Bad(), SHAPE, sampler="ddim", steps=10, progress=False, cuda_graph=True)


def test_graph_loop_fallback_warns(fake_graphs):
    model = CountingModel()
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    for name, skw in (("heun", {"s_churn": 1.0}), ("ddim", {"thresholding": True})):
        with pytest.warns(RuntimeWarning, match="cuda_graph"):
            got = sample(model, SHAPE, sampler=name, steps=4, sampler_kwargs=skw, initial_noise=x0, progress=False,
                         cuda_graph=True, generator=torch.Generator().manual_seed(0))
        want = sample(model, SHAPE, sampler=name, steps=4, sampler_kwargs=skw, initial_noise=x0, progress=False,
                      generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
