"""fastgen.nn modules against the torch modules they replace."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgen
from fastgen.nn import GroupNormAct


def _pair(act):
    torch.manual_seed(0)
    ref = nn.GroupNorm(4, 12)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    seq = nn.Sequential(ref, {"silu": nn.SiLU(), "gelu": nn.GELU()}[act]) if act else ref
    return seq, GroupNormAct.from_group_norm(ref, act)


@pytest.mark.parametrize("act", [None, "silu", "gelu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_group_norm_act_matches_torch_modules(act, layout):
    seq, fused = _pair(act)
    x = torch.randn(3, 12, 5, 7)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = seq(xa), fused(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, seq[0].weight if act else seq.weight], gy)
    fused.zero_grad()
    gb = torch.autograd.grad(yb, [xb, fused.weight], gy)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_group_norm_act_state_dict_is_group_norms():
    ref = nn.GroupNorm(8, 32)
    fused = GroupNormAct(8, 32, activation="silu")
    assert fused.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        ref.weight.uniform_()
    fused.load_state_dict(ref.state_dict())
    torch.testing.assert_close(fused.weight, ref.weight)
    shared = GroupNormAct.from_group_norm(ref)
    assert shared.weight is ref.weight  # parameters shared, not copied


def test_group_norm_act_scale_shift_and_backends():
    m = GroupNormAct(4, 8, activation="silu")
    x = torch.randn(2, 8, 6, 6)
    s, t = torch.randn(2, 8), torch.randn(2, 8, 1, 1)
    want = F.silu(F.group_norm(x, 4, m.weight, m.bias) * (1 + s[:, :, None, None]) + t)
    torch.testing.assert_close(m(x, s, t), want, rtol=1e-5, atol=1e-5)
    with fastgen.use_backend("torch"):
        torch.testing.assert_close(m(x, s, t), want, rtol=1e-5, atol=1e-5)


def test_group_norm_act_no_affine_and_bad_arguments():
    m = GroupNormAct(2, 4, affine=False)
    assert m.weight is None and list(m.parameters()) == []
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(m(x), F.group_norm(x, 2), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        GroupNormAct(3, 4)
    with pytest.raises(ValueError, match="activation"):
        GroupNormAct(2, 4, activation="relu")
    with pytest.raises(ValueError, match="num_groups"):
        GroupNormAct(0, 4)
    with pytest.raises(TypeError, match="nn.GroupNorm"):
        GroupNormAct.from_group_norm(nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="GELU"):
        GroupNormAct.from_group_norm(nn.GroupNorm(2, 4), nn.GELU(approximate="tanh"))
    with pytest.raises(ValueError, match="shift"):
        GroupNormAct(2, 4)(torch.randn(2, 4, 3, 3), shift=torch.randn(3, 4))


# ----------------------------------------------------------------------------- timestep embedding
from fastgen.nn import TimestepEmbedding, timestep_embedding  # noqa: E402


@pytest.mark.parametrize("dim", [2, 7, 64, 320])
@pytest.mark.parametrize("flip,shift", [(False, 1.0), (True, 0.0), (True, 1.0)])
def test_timestep_embedding_equals_diffusers(dim, flip, shift):
    emb = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0.0, 1.0, 17.5, 999.0, 500.25])
    if dim // 2 - shift <= 0:
        pytest.skip("undefined frequency spacing")
    got = timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    want = emb.get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert got.shape == (5, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_timestep_embedding_adm_convention():
    t = torch.tensor([3.0, 250.0])
    half = 8
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    arg = t.double()[:, None] * freqs[None]
    want = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).float()
    torch.testing.assert_close(timestep_embedding(t, 16), want, rtol=1e-5, atol=1e-5)


def test_timestep_embedding_module_loads_diffusers_weights():
    emb = pytest.importorskip("diffusers.models.embeddings")
    torch.manual_seed(0)
    theirs = emb.TimestepEmbedding(32, 128)
    proj = emb.Timesteps(32, flip_sin_to_cos=True, downscale_freq_shift=0)
    ours = TimestepEmbedding(32, 128)
    ours.load_state_dict(theirs.state_dict())
    t = torch.tensor([1, 10, 999])
    torch.testing.assert_close(ours(t), theirs(proj(t)), rtol=1e-6, atol=1e-6)
    assert ours(torch.tensor(5.0)).shape == (1, 128)


def test_timestep_embedding_bad_input():
    with pytest.raises(ValueError, match="timesteps"):
        timestep_embedding(torch.zeros(2, 3), 8)
    with pytest.raises(ValueError, match="dim"):
        timestep_embedding(torch.zeros(2), 1)
    with pytest.raises(ValueError, match="downscale_freq_shift"):
        timestep_embedding(torch.zeros(2), 2, downscale_freq_shift=1.0)
    with pytest.raises(ValueError, match="max_period"):
        timestep_embedding(torch.zeros(2), 8, max_period=float("nan"))
    with pytest.raises(ValueError, match="time_embed_dim"):
        TimestepEmbedding(8, 0)
