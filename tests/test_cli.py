"""The command line (``python -m fastgen info|demo``) and the DDIM demo in fastgen.demo."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import fastgen
from fastgen import _extension, backend, cli, demo
from fastgen.cli import main

# A correct run lands on dataset images (distance ~1e-7); random images sit ~0.8-1.3 away, and
# distinct dataset images are > 0.1 apart, so 0.05 means "on a dataset image".
NN_THRESHOLD = 0.05
TINY = dict(steps=5, num_images=4, size=16)


def _run_cli(tmp_path, *args, **env_overrides):
    """``python -m fastgen ARGS`` in a fresh process, run from an unrelated folder."""
    env = dict(os.environ)
    for k in ("TRITON_INTERPRET", "FASTGEN_BACKEND"):  # conftest sets TRITON_INTERPRET=1 in-process
        env.pop(k, None)
    env.update(env_overrides)
    proc = subprocess.run([sys.executable, "-m", "fastgen", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def _table_row(text: str, op: str) -> tuple[str, str]:
    """(cpu impl, cuda impl) from the op table of `fastgen info`."""
    m = re.search(rf"^\s+{op}\s+(\S+)\s+(\S+)\s*$", text, flags=re.M)
    assert m, f"no table row for {op} in:\n{text}"
    return m.group(1), m.group(2)


def _expected_cpu_impl() -> str:
    return "cpp" if _extension.status()["loaded"] else "torch"


# ----------------------------------------------------------------------------- info
@pytest.fixture(scope="module")
def info_outputs(tmp_path_factory):
    """``fastgen info`` and ``fastgen info --json`` from fresh processes (run once per module)."""
    tmp = tmp_path_factory.mktemp("info")
    return _run_cli(tmp, "info"), json.loads(_run_cli(tmp, "info", "--json"))


def test_info_text(info_outputs):
    out, _ = info_outputs
    assert re.search(rf"^fastgen {re.escape(fastgen.__version__)} ", out, flags=re.M), out
    assert re.search(rf"^torch\s+{re.escape(torch.__version__)} ", out, flags=re.M), out
    assert re.search(r"^triton\s+\S", out, flags=re.M) and re.search(r"^numpy\s+\S", out, flags=re.M)
    st = _extension.status()
    if st["loaded"]:
        assert f"fastgen._C: loaded ({st['how']})" in out
        assert f"cpu_capability: {st['cpu_capability']}" in out
        assert f"built_with_cuda: {st['built_with_cuda']}" in out
    else:
        assert "fastgen._C: NOT loaded" in out and st["error"] in out
    cpu, cuda = _table_row(out, "ddim_step")
    assert cpu == _expected_cpu_impl()
    assert cuda in backend.IMPLS
    if not torch.cuda.is_available():
        assert "no CUDA GPU visible" in out
        assert cuda == "torch"
    # every impl's availability is listed, with the reason Triton is not usable on CPU tensors
    assert re.search(r"^\s+triton\s+cpu: no \(.*TRITON_INTERPRET=1", out, flags=re.M), out
    assert "TRITON_INTERPRET=" not in out.split("environment:")[1].split("ops (")[0]


def test_info_json_has_same_facts(info_outputs):
    text, info = info_outputs
    assert info["fastgen"]["version"] == fastgen.__version__
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda"] == torch.version.cuda
    assert info["extension"]["loaded"] == _extension.status()["loaded"]
    assert f"fastgen._C: {'loaded' if info['extension']['loaded'] else 'NOT loaded'} ({info['extension']['how']})" in text
    assert info["devices"]["cpu"]["cores"] == os.cpu_count()
    assert info["env"] == {k: os.environ[k] for k in ("FASTGEN_NO_JIT", "FASTGEN_FORCE_JIT", "THP_MEM_ALLOC_ENABLE")
                           if k in os.environ}
    assert info["dispatch"] == "auto"
    op = info["ops"]["ddim_step"]
    assert (op["uses"]["cpu"]["impl"], op["uses"]["cuda"]["impl"]) == _table_row(text, "ddim_step")
    assert op["uses"]["cpu"]["impl"] == _expected_cpu_impl()
    assert set(op["impls"]) == set(backend.registered_ops()["ddim_step"].impls)
    assert op["impls"]["torch"]["cpu"] == {"available": True, "reason": None}
    tri = op["impls"]["triton"]["cpu"]
    assert tri["available"] is False and "TRITON_INTERPRET" in tri["reason"] and tri["reason"] in text


def test_info_forced_unavailable_backend_reports_reason(tmp_path, monkeypatch):
    text = _run_cli(tmp_path, "info", FASTGEN_BACKEND="triton", TRITON_INTERPRET="0")
    assert "FASTGEN_BACKEND=triton" in text and "forced to 'triton'" in text
    assert _table_row(text, "ddim_step")[0] == "ERROR"
    assert re.search(r"ERROR on cpu: .*impl='triton' is not available on cpu: .*TRITON_INTERPRET=1", text), text
    # the same through use_backend, in-process (FASTGEN_BACKEND itself is read at import)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastgen.use_backend("triton"):
        info = cli.collect_info()
    assert info["dispatch"] == "triton"
    cpu = info["ops"]["ddim_step"]["uses"]["cpu"]
    assert cpu["impl"] is None and "TRITON_INTERPRET" in cpu["error"] and cpu["error"] in cli.format_info(info)
    json.dumps(info)  # serialisable


# ----------------------------------------------------------------------------- demo pieces
def test_schedule_and_timesteps_follow_diffusers():
    ac = demo.scaled_linear_alphas_cumprod()
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    assert ac[0].item() == pytest.approx(1 - 0.00085, rel=1e-12)
    assert bool((ac[1:] < ac[:-1]).all())
    ts = demo.ddim_timesteps(25)
    assert ts[:3].tolist() == [960, 920, 880] and ts[-1].item() == 0
    assert demo.ddim_timesteps(1000).tolist() == list(range(999, -1, -1))
    pairs = demo.step_alphas(ac, ts)
    assert all(a.dim() == 0 and a.dtype == torch.float64 and p.dtype == torch.float64 for a, p in pairs)
    assert pairs[0][0].item() == ac[960].item() and pairs[0][1].item() == ac[920].item()
    assert pairs[-1][1].item() == 1.0  # final_alpha_cumprod = 1


def test_dataset_is_deterministic_and_in_range():
    a, b = demo.make_dataset(16), demo.make_dataset(16)
    assert a.shape == (demo.DATASET_SIZE, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    d = torch.cdist(a.flatten(1), a.flatten(1)) / math.sqrt(a[0].numel())
    d.fill_diagonal_(float("inf"))
    assert d.min() > 2 * NN_THRESHOLD  # all images distinct, further apart than the threshold


def test_bayes_denoiser_matches_direct_float64_formula():
    data = demo.make_dataset(16)[:10]
    den = demo.BayesDenoiser(data)
    g = torch.Generator().manual_seed(1)
    for a in (0.05, 0.5, 0.98):
        x = math.sqrt(a) * data[:3] + math.sqrt(1 - a) * torch.randn(3, 3, 16, 16, generator=g)
        eps, x0 = den(x, a)
        xs, ds = x.flatten(1).double(), data.flatten(1).double()
        d2 = ((xs[:, None, :] - math.sqrt(a) * ds[None]) ** 2).sum(-1)
        w = torch.softmax(-d2 / (2 * (1 - a)), dim=1)
        x0_ref = (w @ ds).view_as(x)
        eps_ref = (x.double() - math.sqrt(a) * x0_ref) / math.sqrt(1 - a)
        torch.testing.assert_close(x0.double(), x0_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(eps.double(), eps_ref, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- demo runs
def test_demo_writes_png_and_matches_plain_pytorch(tmp_path):
    from PIL import Image

    png = tmp_path / "sub" / "demo.png"
    r = demo.run_demo(**TINY, out=png)
    assert r["impl"] == _expected_cpu_impl()
    assert r["png"] == str(png) and png.is_file()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        # two 2x2 grids (samples | nearest dataset images) of 16 px images upscaled x4, with padding
        grid_w = demo.PAD + 2 * (16 * demo.UPSCALE + demo.PAD)
        assert img.size == r["image_size"] == (2 * grid_w + 8, grid_w)
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.size[1], img.size[0], 3)
    pixels = pixels.to(torch.int16)
    cell = pixels[demo.PAD:demo.PAD + 64:demo.UPSCALE, demo.PAD:demo.PAD + 64:demo.UPSCALE]
    expected = ((r["samples"][0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).to(torch.int16)
    assert (cell - expected).abs().max() <= 1  # the PNG shows the samples
    assert r["samples"].shape == (4, 3, 16, 16)
    assert r["max_abs_diff"] < 1e-4 and r["max_abs_diff_trajectory"] < 1e-4
    assert r["nn_distance"] < NN_THRESHOLD and r["nn_distance_max"] < NN_THRESHOLD
    assert r["distinct_neighbours"] >= 2
    assert r["fused_update_ms"] > 0 and r["plain_update_ms"] > 0
    assert "max |fastgen - plain PyTorch|" in demo.format_summary(r)


def test_nn_threshold_separates_real_samples_from_garbage():
    data = demo.make_dataset(16)
    g = torch.Generator().manual_seed(0)
    garbage = {
        "uniform": torch.rand(8, 3, 16, 16, generator=g) * 2 - 1,
        "gaussian (x_T)": torch.randn(8, 3, 16, 16, generator=g),
        "dataset mean": data.mean(0, keepdim=True).expand(8, -1, -1, -1),
        "blend of two images": 0.5 * (data[:8] + data[8:16]),
    }
    for what, x in garbage.items():
        assert demo.nearest_neighbour_distance(x, data) > 3 * NN_THRESHOLD, what
    assert demo.nearest_neighbour_distance(data[:8], data) == pytest.approx(0.0, abs=1e-6)
    r = demo.run_demo(**TINY, out=None)
    assert r["nn_distance"] < NN_THRESHOLD


@pytest.mark.parametrize("impl,eta", [(None, 1.0), ("torch", 0.5), ("cpp", 0.0), ("triton", 0.5)])
def test_demo_impls_and_eta(impl, eta):
    if impl is not None and not backend.impl_available(impl, "cpu")[0]:
        pytest.skip(backend.impl_available(impl, "cpu")[1])
    r = demo.run_demo(**TINY, eta=eta, impl=impl, out=None)
    assert r["impl"] == (impl or _expected_cpu_impl())
    assert r["max_abs_diff"] < 1e-4 and r["max_abs_diff_trajectory"] < 1e-4
    assert r["nn_distance"] < NN_THRESHOLD


@pytest.mark.parametrize("kwargs,name", [
    (dict(steps=0), "steps"), (dict(steps=1001), "steps"), (dict(steps=2.5), "steps"),
    (dict(num_images=0), "num_images"), (dict(size=48), "size"), (dict(size=32.0), "size"),
    (dict(eta=-0.1), "eta"), (dict(eta=1.5), "eta"), (dict(eta=float("nan")), "eta"),
    (dict(impl="cuda"), "impl"),
])
def test_demo_bad_args_name_the_argument(tmp_path, kwargs, name):
    png = tmp_path / "never.png"
    with pytest.raises(ValueError, match=rf"^{name} must"):
        demo.run_demo(**{**TINY, **kwargs}, out=png)
    assert not png.exists()


# ----------------------------------------------------------------------------- CLI demo (in-process)
def test_cli_demo_runs(tmp_path, capsys):
    png = tmp_path / "cli.png"
    assert main(["demo", "--steps", "3", "--num-images", "2", "--size", "16", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.is_file() and str(png) in out
    assert f"ddim_step implementation on CPU: {_expected_cpu_impl()}" in out
    assert "update time per step" in out and "nearest-dataset-image distance" in out


@pytest.mark.parametrize("args,flag", [(["--steps", "0"], "--steps"), (["--num-images", "0"], "--num-images"),
                                       (["--size", "20"], "--size"), (["--eta", "2"], "--eta")])
def test_cli_demo_bad_args_exit_nonzero(tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *args, "--out", str(tmp_path / "x.png")])
    assert exc.value.code != 0
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_demo_unavailable_impl_is_an_error_not_a_crash(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["demo", "--impl", "triton", "--out", str(tmp_path / "x.png")]) == 1
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err


def test_cli_without_command_prints_usage(capsys):
    assert main([]) == 2
    assert "info" in capsys.readouterr().err


# ----------------------------------------------------------------------------- training demo
def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return im.size


def test_cli_training_demo_tiny_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    try:  # one thread: the least hurt by other processes on a shared test machine
        assert main(["demo", "--minutes", "0.02", "--max-steps", "2", "--size", "8", "--out", str(out),
                     "--no-progress", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert 1 <= summary["diffusion"]["steps"] <= 2 and 1 <= summary["gan"]["steps"] <= 2
    assert _png(out / "samples.png") == tuple(summary["samples_png_size"])
    assert _png(out / "losses.png") == tuple(summary["losses_png_size"])
    assert set(summary["speed"]) == {"diffusion training step", "DDIM sampling (8 images, 2 steps, CFG)",
                                     "GAN training step"}
    for case, s in summary["speed"].items():
        assert s["fastgen_s"] > 0 and s["torch_s"] > 0 and s["speedup"] == pytest.approx(s["torch_s"] / s["fastgen_s"])
        assert re.search(rf"{re.escape(case)}: .* vs .* -> \d+\.\d\dx", text), text
    assert f"wrote {out / 'samples.png'}" in text


@pytest.mark.parametrize("args, flag", [
    (["--minutes", "0"], "--minutes"), (["--minutes", "nan"], "--minutes"), (["--size", "64"], "--size"),
    (["--device", "nonsense"], "--device"), (["--seed", "-1"], "--seed"), (["--threads", "0"], "--threads"),
    (["--steps", "5", "--minutes", "1"], "--minutes"),  # a quick-demo flag with a training-demo flag
    (["--quick", "--device", "cpu"], "--device"),
])
def test_cli_training_demo_bad_args(tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *args, "--out", str(tmp_path / "d")])
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cli_training_demo_cuda_unavailable(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--device", "cuda", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert "argument --device" in err and "no CUDA GPU" in err


def test_demo_mode_selection():
    p = cli.build_parser()
    mode = lambda *a: cli.demo_mode(p.parse_args(["demo", *a]))  # noqa: E731
    assert mode() == "train" and mode("--minutes", "1", "--out", "dir") == "train"
    assert mode("--quick") == "quick" and mode("--out", "x.PNG") == "quick" and mode("--eta", "0") == "quick"
    # the CI invocation
    assert mode("--steps", "5", "--num-images", "4", "--size", "16", "--out", "demo.png") == "quick"
