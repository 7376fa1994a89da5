"""fastgen.optimize on users' AdaIN blocks (a module with an nn.InstanceNorm2d child whose forward
computes ``norm(x) * a + b``): the pair runs on fastgen's adain when a, b are per-(sample, channel),
the original ops otherwise; outputs and gradients equal the original, report, restore, idempotence,
pickling."""
import copy
import importlib
import inspect
import io
import pickle

import pytest
import torch
from torch import nn

import fastgen

fo = importlib.import_module("fastgen.optimize")   # the module (fastgen.optimize is the function)

RTOL, ATOL = 1e-5, 1e-5
C, W_DIM = 6, 5


class AdaIN(nn.Module):
    """The usual user AdaIN block; ``form`` picks how the forward writes ``s * norm(x) + b``."""

    def __init__(self, c=C, w_dim=W_DIM, form="index"):
        super().__init__()
        self.form = form
        self.norm = nn.InstanceNorm2d(c)
        self.style = nn.Linear(w_dim, 2 * c)

    def forward(self, x, w):
        s, b = self.style(w).chunk(2, dim=1)
        n, c = x.shape[:2]
        if self.form == "index":
            return s[:, :, None, None] * self.norm(x) + b[:, :, None, None]
        if self.form == "one_plus":
            return (1 + s).view(n, c, 1, 1) * self.norm(x) + b.view(n, c, 1, 1)
        if self.form == "unsqueeze":
            return self.norm(x) * s.unsqueeze(-1).unsqueeze(-1) + b.unsqueeze(-1).unsqueeze(-1)
        if self.form == "bias_first":
            return b.reshape(n, c, 1, 1) + self.norm(x) * s.reshape(n, c, 1, 1)
        if self.form == "torch_fns":
            return torch.add(torch.mul(self.norm(x), s[..., None, None]), b[..., None, None])
        if self.form == "methods":
            return self.norm(x).mul(s[..., None, None]).add(b[..., None, None])
        if self.form == "in_place":
            h = self.norm(x)
            h *= s[..., None, None]
            h += b[..., None, None]
            return h
        raise ValueError(self.form)


class ChannelScale(nn.Module):
    """Per-channel (C, 1, 1) parameter scale: broadcasts per (sample, channel), so adain runs too."""

    def __init__(self, c=C):
        super().__init__()
        self.norm = nn.InstanceNorm2d(c, eps=1e-3)
        self.gamma = nn.Parameter(torch.randn(c, 1, 1))
        self.register_buffer("beta", torch.randn(1, c, 1, 1))

    def forward(self, x):
        return self.norm(x) * self.gamma + self.beta


class Spatial(nn.Module):
    """SPADE-like: the modulation varies over H, W (not per-(sample, channel)): the original ops run."""

    def __init__(self, c=C):
        super().__init__()
        self.norm = nn.InstanceNorm2d(c)
        self.to_s = nn.Conv2d(c, c, 1)
        self.row = nn.Parameter(torch.randn(4))   # (W,) -- broadcasts along the last dim

    def forward(self, x, seg):
        return self.norm(x) * self.to_s(seg) + self.row


class Gen(nn.Module):
    """Several AdaIN blocks inside a ModuleList and a Sequential, plus a plain (unmatched) InstanceNorm2d."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1) for _ in range(3)])
        self.ada = nn.ModuleList([AdaIN(form=f) for f in ("index", "one_plus", "in_place")])
        self.tail = nn.Sequential(ChannelScale(), nn.Conv2d(C, C, 1), nn.InstanceNorm2d(C), nn.LeakyReLU(0.2))

    def forward(self, x, w):
        for conv, ada in zip(self.convs, self.ada):
            x = ada(conv(x), w)
        return self.tail(x)


def _randomize(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def _inputs(n=2, h=4, w=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, h, w, generator=g), torch.randn(n, W_DIM, generator=g)


@pytest.fixture
def adain_calls(monkeypatch):
    """Counts the calls of fastgen adain made by the rewritten blocks."""
    calls = []
    real = fo.adain

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(fo, "adain", counting)
    return calls


def _grads(model, run):
    model.zero_grad(set_to_none=True)
    out = run(model)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _check(model, run, opt=None):
    """opt (default: optimize(model)) vs model: forward in eval and train, parameter gradients."""
    if opt is None:
        opt, rep = fastgen.optimize(model, report=True)
    else:
        rep = None
    assert list(opt.state_dict()) == list(model.state_dict())
    for mode in (False, True):
        model.train(mode)
        opt.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(run(opt), run(model), rtol=RTOL, atol=ATOL)
    (o1, g1), (o2, g2) = _grads(opt, run), _grads(model, run)
    torch.testing.assert_close(o1, o2, rtol=RTOL, atol=ATOL)
    assert g1.keys() == g2.keys() and g1
    # atol relative to the gradients' scale: fp32 torch itself is ~0.5e-5 * max off float64 here (and a conv
    # bias right before an InstanceNorm has a zero gradient, i.e. pure rounding noise)
    atol = 2e-5 * max([1.0] + [g.abs().max().item() for g in g2.values()])
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=atol, msg=lambda m: f"grad {k}: {m}")
    return opt, rep


@pytest.mark.parametrize("form", ["index", "one_plus", "unsqueeze", "bias_first", "torch_fns", "methods", "in_place"])
def test_adain_block_forms(form, adain_calls):
    m = _randomize(AdaIN(form=form))
    x, w = _inputs()
    opt, rep = _check(m, lambda mm: mm(x, w))
    assert [(e.path, e.action) for e in rep.replaced] == [("", "fused adain")], str(rep)
    assert type(opt).__name__ == "FastgenAdaIN" and type(opt.norm) is nn.InstanceNorm2d  # the norm is not fused twice
    assert inspect.signature(opt.forward) == inspect.signature(m.forward)
    assert len(adain_calls) == 3 and all(s == x.shape for s in adain_calls)   # eval, train, grads (opt only)
    assert opt.style is not m.style and opt.style.weight is opt.get_parameter("style.weight")


def test_in_place_form_keeps_aliasing(adain_calls):
    """``h *= s`` on the norm output stays in place (and fused): the input tensors are untouched."""
    m = _randomize(AdaIN(form="in_place"))
    x, w = _inputs()
    x0, w0 = x.clone(), w.clone()
    opt = fastgen.optimize(m)
    with torch.no_grad():
        opt(x, w)
    assert adain_calls and torch.equal(x, x0) and torch.equal(w, w0)


def test_per_channel_parameter_and_buffer(adain_calls):
    m = _randomize(ChannelScale())
    x, _ = _inputs(n=3, h=5, w=3)
    opt, rep = _check(m, lambda mm: mm(x))
    assert rep.counts() == {"fused adain": 1} and adain_calls
    opt.beta.fill_(0.5)            # buffers and parameters are read live
    m.beta.fill_(0.5)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), m(x), rtol=RTOL, atol=ATOL)


def test_styles_not_per_sample_channel_run_the_original(adain_calls):
    m = _randomize(Spatial())
    x, _ = _inputs(n=2, h=4, w=4)
    seg = torch.randn(2, C, 4, 4)
    opt, rep = fastgen.optimize(m, report=True)
    assert rep.counts() == {"fused adain": 1}            # the pattern is there; the shapes are checked at run time
    with torch.no_grad():
        torch.testing.assert_close(opt(x, seg), m(x, seg), rtol=0, atol=0)
    _check(m, lambda mm: mm(x, seg), opt=opt)
    assert not adain_calls
    # mixed: a per-(N, C) scale but a spatial bias, or a dtype that differs from x's
    m2 = _randomize(AdaIN())
    opt2 = fastgen.optimize(m2)
    x64, w64 = (t.double() for t in _inputs())
    with torch.no_grad():
        torch.testing.assert_close(opt2(x64, w64.float()), m2(x64, w64.float()), rtol=0, atol=0)
        # unbatched (C, H, W) input: InstanceNorm2d's own handling
        torch.testing.assert_close(opt2(x64[0].float(), w64[:1].float()), m2(x64[0].float(), w64[:1].float()),
                                   rtol=0, atol=0)
    assert not adain_calls


def test_generator_with_several_blocks(adain_calls):
    g = _randomize(Gen())
    x, w = _inputs(n=2, h=6, w=6)
    opt, rep = _check(g, lambda mm: mm(x, w))
    fused = sorted(e.path for e in rep.replaced if e.action == "fused adain")
    assert fused == ["ada.0", "ada.1", "ada.2", "tail.0"], str(rep)
    # the AdaIN norms are not fused again; the plain InstanceNorm2d in the Sequential is (as before)
    assert all(type(b.norm) is nn.InstanceNorm2d for b in opt.ada) and type(opt.tail[0].norm) is nn.InstanceNorm2d
    assert type(opt.tail[2]).__name__ == "FastgenInstanceNorm2d"
    assert rep.counts()["fused group_norm (C groups)"] == 1
    assert len(adain_calls) == 4 * 3   # 4 blocks x (eval, train, grads)
    # idempotent
    again, rep2 = fastgen.optimize(opt, inplace=True, report=True)
    assert again is opt and not rep2.replaced
    assert sum(e.reason == "already optimized" for e in rep2.left_alone) == 5
    assert all(type(b.norm) is nn.InstanceNorm2d for b in opt.ada) and type(opt.tail[0].norm) is nn.InstanceNorm2d
    assert type(opt.ada[0]) is type(fastgen.optimize(AdaIN()))   # one generated class per original class
    # state_dict both ways
    fresh = _randomize(Gen(), seed=3)
    fresh.load_state_dict(opt.state_dict())
    opt.load_state_dict(g.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(opt(x, w), fresh(x, w), rtol=RTOL, atol=ATOL)
    # restore: original classes and forward
    fastgen.restore(opt)
    assert [type(a) for a in opt.modules()] == [type(a) for a in g.modules()]
    assert not any("_fastgen_opt" in a.__dict__ for a in opt.modules())
    with torch.no_grad():
        torch.testing.assert_close(opt(x, w), g(x, w), rtol=0, atol=0)


class TwoUses(nn.Module):
    """The same norm in the AdaIN pattern and alone: the pair is fused, the norm itself too (once)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(C)
        self.style = nn.Linear(W_DIM, 2 * C)

    def forward(self, x, w):
        s, b = self.style(w).chunk(2, dim=1)
        return torch.cat([s[..., None, None] * self.norm(x) + b[..., None, None], self.norm(x * 2)], 1)


def test_norm_also_used_outside_the_pattern(adain_calls):
    m = _randomize(TwoUses())
    x, w = _inputs()
    opt, rep = _check(m, lambda mm: mm(x, w))
    assert rep.counts() == {"fused adain": 1, "fused group_norm (C groups)": 1}, str(rep)
    assert type(opt.norm).__name__ == "FastgenInstanceNorm2d" and len(adain_calls) == 3


def test_training_updates_shared_parameters():
    m = _randomize(AdaIN())
    ref = copy.deepcopy(m)
    opt = fastgen.optimize(m, inplace=True)
    x, w = _inputs()
    for model in (opt, ref):
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            sgd.zero_grad()
            model(x, w).square().mean().backward()
            sgd.step()
    for (k, p), q in zip(opt.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda msg: f"{k}: {msg}")


class TrainingDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(C)
        self.style = nn.Linear(W_DIM, 2 * C)
        self.gain = 1.0

    def forward(self, x, w):
        s, b = self.style(w).chunk(2, dim=1)
        if self.training:
            s = s * 0.5
        return self.norm(x) * (self.gain * s)[:, :, None, None] + b[:, :, None, None]


def test_training_flag_and_python_attributes_are_not_stale(adain_calls):
    m = _randomize(TrainingDependent())
    x, w = _inputs()
    opt, _ = _check(m, lambda mm: mm(x, w))
    fns = opt.__dict__["_fastgen_opt"]["fns"]
    assert fns[True] is not fns[False]       # two traces
    for gain in (2.0, -0.25):                # a plain attribute read by forward changed: traced again
        m.gain = opt.gain = gain
        for mode in (True, False):
            m.train(mode)
            opt.train(mode)
            with torch.no_grad():
                torch.testing.assert_close(opt(x, w), m(x, w), rtol=RTOL, atol=ATOL)
    assert len(adain_calls) == 3 + 4


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(C)

    def forward(self, x, s):
        if x.sum() > 0:                      # not symbolically traceable
            return self.norm(x) * s + s
        return self.norm(x)


class NormThenAct(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.norm = nn.InstanceNorm2d(C, **kw)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(x)) * 2 + 1


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(C)
        self.calls = 0

    def forward(self, x, s):
        self.calls += 1
        return self.norm(x) * s + s


def test_left_alone_with_reasons():
    cases = [(DataDependent(), "symbolic trace failed"), (NormThenAct(), "no norm(x) * a + b"),
             (NormThenAct(affine=True), "affine=True"), (NormThenAct(track_running_stats=True),
                                                          "track_running_stats=True"),
             (Counter(), "sets Python attributes")]
    for m, why in cases:
        opt, rep = fastgen.optimize(m, report=True)
        assert "fused adain" not in rep.counts(), str(rep)
        entry = [e for e in rep.left_alone if e.path == ""]
        assert len(entry) == 1 and why in entry[0].reason, str(rep)
        assert type(opt) is type(m)
        if not m.norm.track_running_stats:   # the norm alone: fused as before
            assert type(opt.norm).__name__ == "FastgenInstanceNorm2d"
    c = Counter()
    fastgen.optimize(c, inplace=True)
    assert c.calls == 0 and "_tensor_constant0" not in c.__dict__   # tracing left no trace on the module


def test_hooks_on_the_norm():
    m = _randomize(AdaIN())
    x, w = _inputs()
    hooked = _randomize(AdaIN())
    hooked.norm.register_forward_hook(lambda mod, inp, out: out * 2)
    _, rep = fastgen.optimize(hooked, report=True)
    assert "fused adain" not in rep.counts() and "has hooks" in str(rep)
    opt = fastgen.optimize(m)
    opt.norm.register_forward_hook(lambda mod, inp, out: out * 2)   # added later: honoured (original ops)
    m.norm.register_forward_hook(lambda mod, inp, out: out * 2)
    with torch.no_grad():
        torch.testing.assert_close(opt(x, w), m(x, w), rtol=0, atol=0)


def test_backend_torch(adain_calls):
    m = _randomize(AdaIN())
    x, w = _inputs()
    opt = fastgen.optimize(m, backend="torch")
    with torch.no_grad():
        torch.testing.assert_close(opt(x, w), m(x, w), rtol=RTOL, atol=ATOL)
    assert adain_calls


def test_fastgen_stylegan_v1_layer_is_already_fastgen():
    from fastgen.nn.stylegan import AdaINLayer

    layer = AdaINLayer(4, 4, 8, 8)
    _, rep = fastgen.optimize(layer, report=True)
    assert not rep.replaced
    assert [e.reason for e in rep.left_alone if e.path == ""] == ["already a fastgen fused module"]


def test_pickle_and_deepcopy(adain_calls):
    g = _randomize(Gen())
    x, w = _inputs(n=2, h=6, w=6)
    opt = fastgen.optimize(g)
    with torch.no_grad():
        want = opt(x, w)
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    loaded = [pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt), torch.load(buf, weights_only=False)]
    for b in loaded:
        assert type(b.ada[0]) is type(opt.ada[0]) and list(b.state_dict()) == list(g.state_dict())
        del adain_calls[:]
        with torch.no_grad():
            torch.testing.assert_close(b(x, w), want, rtol=0, atol=0)
        assert len(adain_calls) == 4       # still fused (the traced code is rebuilt after loading)
        _check(g, lambda mm: mm(x, w), opt=b)
        _, rep = fastgen.optimize(b, inplace=True, report=True)
        assert not rep.replaced and sum(e.reason == "already optimized" for e in rep.left_alone) == 5
        fastgen.restore(b)
        assert [type(a) for a in b.modules()] == [type(a) for a in g.modules()]
        with torch.no_grad():
            torch.testing.assert_close(b(x, w), g(x, w), rtol=0, atol=0)


def test_torch_compile_of_an_unpickled_block(adain_calls):
    """The traced code is rebuilt when unpickling, so torch.compile sees no class switching (fullgraph)."""
    m = _randomize(AdaIN(form="one_plus"))
    x, w = _inputs()
    opt = pickle.loads(pickle.dumps(fastgen.optimize(m)))
    torch._dynamo.reset()
    c = torch.compile(opt, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(c(x, w), m(x, w), rtol=RTOL, atol=ATOL)
    assert adain_calls
