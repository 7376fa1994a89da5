"""fastgen.optimize / fastgen.restore: outputs and parameter gradients equal the original model's
(fp32), the report lists the replacements, state_dicts round-trip, idempotent, restorable."""
import copy

import pytest
import torch
from torch import nn

import fastgen
from fastgen.optimize import FastgenAttnProcessor, OptimizeReport

RTOL, ATOL = 1e-5, 1e-4


def _randomize(m, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero everywhere (zero-initialised output convs would hide the network)
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return m


def _fwd_bwd(model, run):
    model.zero_grad(set_to_none=True)
    out = run(model)
    out.square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _check_equivalent(model, run, train=True, rtol=RTOL, atol=ATOL):
    """optimize(copy) vs model: forward and backward (param grads), eval and train mode."""
    opt, rep = fastgen.optimize(model, report=True)
    assert isinstance(rep, OptimizeReport) and rep.replaced, str(rep)
    assert list(opt.state_dict()) == list(model.state_dict())
    for mode in ([False, True] if train else [False]):
        model.train(mode)
        opt.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(run(opt), run(model), rtol=rtol, atol=atol)
        if mode:
            (o1, g1), (o2, g2) = _fwd_bwd(opt, run), _fwd_bwd(model, run)
            torch.testing.assert_close(o1, o2, rtol=rtol, atol=atol)
            assert g1.keys() == g2.keys() and g1
            for k in g1:
                torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=1e-4, msg=lambda m: f"grad {k}: {m}")
    return opt, rep


# ----------------------------------------------------------------------------------- plain PyTorch
def _plain_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16, eps=1e-4), nn.SiLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(16, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.GELU(),
        nn.InstanceNorm2d(8, affine=True),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10), nn.SiLU())


def test_plain_sequential_cnn():
    m = _plain_cnn()
    x = torch.randn(3, 3, 8, 8)
    opt, rep = _check_equivalent(m, lambda mm: mm(x))
    actions = [e.action for e in rep.replaced]
    assert actions.count("fused group_norm+silu") == 1 and actions.count("fused group_norm+gelu") == 1
    assert actions.count("fused bias_act(lrelu)") == 1 and actions.count("fused bias_act(relu)") == 1
    assert actions.count("fused bias_act(silu)") == 1 and "fused group_norm (C groups)" in actions
    assert isinstance(opt[2], nn.Identity) and type(m[2]) is nn.SiLU  # the copy changed, not the original
    assert "fused" in str(rep) and "left alone" in str(rep)
    # parameters are shared with the module they came from (no copies)
    opt2 = fastgen.optimize(m, inplace=True)
    assert opt2 is m and m[1].weight is m.get_parameter("1.weight")


def test_shares_parameters_and_restore():
    m = _plain_cnn()
    params = {k: p for k, p in m.named_parameters()}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = m(x)
    fastgen.optimize(m, inplace=True)
    assert all(p is params[k] for k, p in m.named_parameters())
    opt = torch.optim.SGD(m.parameters(), lr=0.1)   # optimizers built before or after keep working
    assert len(opt.param_groups[0]["params"]) == len(params)
    fastgen.restore(m)
    assert [type(c) for c in m] == [type(c) for c in _plain_cnn()]
    assert all(p is params[k] for k, p in m.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(m(x), want, rtol=0, atol=0)


def test_idempotent_and_state_dict_roundtrip():
    m = _plain_cnn()
    opt, rep1 = fastgen.optimize(m, report=True)
    again, rep2 = fastgen.optimize(opt, inplace=True, report=True)
    assert again is opt and not rep2.replaced
    assert any(e.reason == "already optimized" for e in rep2.left_alone)
    x = torch.randn(2, 3, 8, 8)
    sd = opt.state_dict()
    fresh = _plain_cnn()
    _randomize(fresh, seed=5)
    fresh.load_state_dict(sd)                 # optimized -> original
    opt.load_state_dict(m.state_dict())       # original -> optimized
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)
        torch.testing.assert_close(opt(x), m(x), rtol=RTOL, atol=ATOL)


def test_shared_activation_and_hooks_are_respected():
    act = nn.SiLU()
    m = nn.Sequential(nn.GroupNorm(2, 4), act, nn.Conv2d(4, 4, 1), act)   # act used twice: not fused away
    opt, rep = fastgen.optimize(m, report=True)
    assert type(opt[1]) is nn.SiLU and type(opt[3]) is nn.SiLU
    h = nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU())
    h[1].register_forward_hook(lambda *a: None)
    opt = fastgen.optimize(h)
    assert type(opt[1]) is nn.SiLU


def test_multihead_attention():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[:, -1] = True
    for am in (None, mask):
        _check_equivalent(m, lambda mm: mm(x, x, x, need_weights=False, attn_mask=am)[0])
    opt = fastgen.optimize(m)
    out, w = opt(x, x, x)                                  # need_weights=True: torch's own forward
    assert w is not None


def test_bad_input():
    with pytest.raises(TypeError, match="model"):
        fastgen.optimize("not a model")
    with pytest.raises(ValueError, match="backend"):
        fastgen.optimize(nn.Linear(2, 2), backend="cuda-magic")
    with pytest.raises(TypeError, match="inplace"):
        fastgen.optimize(nn.Linear(2, 2), inplace=1)
    with pytest.raises(TypeError, match="model"):
        fastgen.restore(42)


def test_backend_torch_forces_reference():
    m = _plain_cnn()
    x = torch.randn(2, 3, 8, 8)
    opt = fastgen.optimize(m, backend="torch")
    with torch.no_grad():
        torch.testing.assert_close(opt(x), m(x), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------- fastgen models
def test_fastgen_unet_tiny():
    from fastgen.models import UNet

    torch.manual_seed(0)
    m = _randomize(UNet.from_preset("tiny", image_size=8), std=0.02)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    opt, rep = fastgen.optimize(m, report=True)
    assert any(e.reason == "already a fastgen fused module" for e in rep.left_alone)
    with torch.no_grad():
        torch.testing.assert_close(opt(x, t), m(x, t), rtol=RTOL, atol=ATOL)
    assert list(opt.state_dict()) == list(m.state_dict())


def test_fastgen_dcgan_generator():
    from fastgen.models import DCGANGenerator

    torch.manual_seed(0)
    g = DCGANGenerator(img_resolution=16, z_dim=8)
    z = torch.randn(2, 8)
    opt = fastgen.optimize(g)
    g.eval()
    opt.eval()
    with torch.no_grad():
        torch.testing.assert_close(opt(z), g(z), rtol=RTOL, atol=ATOL)
    assert list(opt.state_dict()) == list(g.state_dict())


# ----------------------------------------------------------------------------------- diffusers
def _unet2d(diffusers, scale_shift=False):
    torch.manual_seed(0)
    m = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                              layers_per_block=1, norm_num_groups=8,
                              down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                              resnet_time_scale_shift="scale_shift" if scale_shift else "default")
    return _randomize(m, std=0.05)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_diffusers_unet2d(scale_shift):
    diffusers = pytest.importorskip("diffusers")
    m = _unet2d(diffusers, scale_shift)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    opt, rep = _check_equivalent(m, lambda mm: mm(x, t).sample)
    counts = rep.counts()
    assert counts["fused ResnetBlock2D"] == 8 and counts["fastgen attention processor"] == 4
    assert counts["fused group_norm+silu"] == 1   # conv_norm_out + conv_act
    assert all(isinstance(a.processor, FastgenAttnProcessor) for a in opt.modules() if hasattr(a, "set_processor"))
    # state_dict round trip into the original class, and idempotence
    m2 = _unet2d(diffusers, scale_shift)
    _randomize(m2, seed=9)
    m2.load_state_dict(opt.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m2(x, t).sample, m(x, t).sample, rtol=0, atol=0)
    _, rep2 = fastgen.optimize(opt, inplace=True, report=True)
    assert not rep2.replaced
    _assert_restored(opt, m, x, t)



def _assert_restored(opt, m, x, t):
    """fastgen.restore(opt) gives back m's module classes and processors and m's exact output."""
    fastgen.restore(opt)
    assert [type(a) for a in opt.modules()] == [type(a) for a in m.modules()]
    assert not any(isinstance(getattr(a, "processor", None), FastgenAttnProcessor) for a in opt.modules())
    with torch.no_grad():
        torch.testing.assert_close(opt(x, t).sample, m(x, t).sample, rtol=0, atol=0)


def test_diffusers_unet2d_condition():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    m = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                       layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                                       attention_head_dim=8,
                                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    _randomize(m, std=0.05)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 32)
    opt, rep = _check_equivalent(m, lambda mm: mm(x, t, encoder_hidden_states=ctx).sample)
    assert rep.counts()["fastgen attention processor"] == 8   # self + cross attention of 4 transformer blocks


@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_diffusers_schedulers(name):
    diffusers = pytest.importorskip("diffusers")
    kw = {"clip_sample": False} if name == "DDIMScheduler" else {}
    ref = getattr(diffusers, name)(**kw)
    ours, rep = fastgen.optimize(getattr(diffusers, name)(**kw), report=True)
    assert rep.replaced and isinstance(ours, type(ref)) and type(ours).__name__ == name
    model = lambda x, t: 0.5 * x * torch.cos(t.float() / 300) + 0.1 * torch.sin(x)  # noqa: E731
    trajs = []
    for s in (ref, ours):
        s.set_timesteps(8)
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
        traj = []
        for t in s.timesteps:
            out = s.step(model(s.scale_model_input(x, t), t), t, x)
            assert type(out).__name__ == ("SchedulerOutput" if "DPM" in name else f"{name}Output")
            x = out.prev_sample
            traj.append(x)
        trajs.append(traj)
    assert ours.__dict__["_fastgen_opt"]["active"]
    for a, b in zip(*trajs):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)
    fastgen.restore(ours)
    assert type(ours) is type(ref)


def test_diffusers_ddim_pipeline():
    diffusers = pytest.importorskip("diffusers")
    unet = _unet2d(diffusers)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    opt, rep = fastgen.optimize(pipe, report=True)
    assert any(e.path == "scheduler" for e in rep.replaced) and any(e.path.startswith("unet.") for e in rep.replaced)
    a = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    b = opt(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    torch.testing.assert_close(torch.from_numpy(b), torch.from_numpy(a), rtol=1e-4, atol=1e-4)
    assert opt.scheduler.__dict__["_fastgen_opt"]["active"]          # the fused step ran
    assert type(pipe.scheduler).__module__.startswith("diffusers")   # inplace=False: the original is untouched


# ----------------------------------------------------------------------------------- pickling / copying
def _roundtrips(model):
    """pickle, torch.save (whole module) and deepcopy copies of ``model``."""
    import io
    import pickle

    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return [pickle.loads(pickle.dumps(model)), torch.load(buf, weights_only=False), copy.deepcopy(model)]


def test_pickle_optimized_sequential_cnn():
    m = _plain_cnn()
    x = torch.randn(2, 3, 8, 8)
    opt = fastgen.optimize(m)
    with torch.no_grad():
        want = opt(x)
    for b in _roundtrips(opt):
        assert [type(c) for c in b] == [type(c) for c in opt]          # same generated classes, placeholders
        assert b[2]._fastgen_original is not opt[2]._fastgen_original and type(b[2]._fastgen_original) is nn.SiLU
        assert list(b.state_dict()) == list(m.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(b(x), want, rtol=0, atol=0)
        _, rep = fastgen.optimize(b, inplace=True, report=True)
        assert not rep.replaced and sum(e.reason == "already optimized" for e in rep.left_alone) == 11, str(rep)
        fastgen.restore(b)
        assert [type(c) for c in b] == [type(c) for c in m]
        with torch.no_grad():
            torch.testing.assert_close(b(x), m(x), rtol=0, atol=0)


def test_pickle_optimized_diffusers_unet2d():
    diffusers = pytest.importorskip("diffusers")
    m = _unet2d(diffusers)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    opt = fastgen.optimize(m)
    with torch.no_grad():
        want = opt(x, t).sample
    for b in _roundtrips(opt):
        assert [type(a) for a in b.modules()] == [type(a) for a in opt.modules()]
        assert all(isinstance(a.processor, FastgenAttnProcessor) for a in b.modules() if hasattr(a, "set_processor"))
        with torch.no_grad():
            torch.testing.assert_close(b(x, t).sample, want, rtol=0, atol=0)
        _, rep = fastgen.optimize(b, inplace=True, report=True)
        assert not rep.replaced and any(e.reason == "already optimized" for e in rep.left_alone)
        _assert_restored(b, m, x, t)


def test_pickle_optimized_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    ours = fastgen.optimize(diffusers.DDIMScheduler(clip_sample=False))
    ours.set_timesteps(4)
    for b in _roundtrips(ours):
        assert type(b) is type(ours) and type(b).__name__ == "DDIMScheduler"
        trajs = []
        for s in (ours, b):
            s.set_timesteps(4)
            x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
            for t in s.timesteps:
                x = s.step(0.5 * x, t, x).prev_sample
            trajs.append(x)
        assert b.__dict__["_fastgen_opt"]["active"]
        torch.testing.assert_close(trajs[1], trajs[0], rtol=0, atol=0)
        fastgen.restore(b)
        assert type(b) is diffusers.DDIMScheduler


class _OwnReduce(nn.GroupNorm):
    def __reduce__(self):
        return (_OwnReduce, (2, 4))


def test_pickle_of_a_class_with_its_own_reduce_says_why():
    import pickle

    from fastgen.optimize import _FusedGroupNorm, _swap   # optimize only swaps exact nn.GroupNorm; force it

    opt = _OwnReduce(2, 4)
    _swap(opt, _FusedGroupNorm, act=None, backend=None)
    for copier in (pickle.dumps, copy.deepcopy):
        with pytest.raises(pickle.PicklingError, match="defines its own __reduce__.*fastgen.restore"):
            copier(opt)
