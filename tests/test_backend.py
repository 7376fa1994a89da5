"""Dispatch: auto choice per device, forcing with impl= / use_backend / FASTGEN_BACKEND, and
clear errors when a forced implementation is unavailable."""
import os
import subprocess
import sys

import pytest
import torch

import fastgen
from fastgen import backend
from fastgen.functional import ddim_step

HAS_CPP = backend.impl_available("cpp", "cpu")[0]


def test_auto_prefers_compiled_kernels_on_cpu():
    want = "cpp" if HAS_CPP else "torch"
    assert backend.resolve("ddim_step", torch.device("cpu")) == want


def test_auto_on_cuda_without_gpu_falls_back_to_reference():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert backend.resolve("ddim_step", torch.device("cuda")) == "torch"
    ok, why = backend.impl_available("triton", "cuda")
    assert not ok and "no CUDA GPU" in why


def test_use_backend_nests_and_restores():
    dev = torch.device("cpu")
    auto = backend.resolve("ddim_step", dev)
    with fastgen.use_backend("torch"):
        assert backend.resolve("ddim_step", dev) == "torch"
        with fastgen.use_backend("auto"):
            assert backend.resolve("ddim_step", dev) == auto
        assert backend.resolve("ddim_step", dev) == "torch"
        # impl= beats the context
        if HAS_CPP:
            assert backend.resolve("ddim_step", dev, "cpp") == "cpp"
    assert backend.resolve("ddim_step", dev) == auto


def test_use_backend_restores_after_exception():
    with pytest.raises(KeyError):
        with fastgen.use_backend("torch"):
            raise KeyError("boom")
    assert backend.forced_backend() == backend.env_backend()


@pytest.mark.parametrize("bad", ["cuda", "", "TORCHX", None, 3])
def test_invalid_backend_names(bad):
    with pytest.raises(ValueError, match="must be one of"):
        with fastgen.use_backend(bad):
            pass


def test_forcing_unavailable_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 3)
    with pytest.raises(fastgen.BackendUnavailableError, match="impl='triton' is not available on cpu: .*TRITON_INTERPRET"):
        ddim_step(x, x, 0.3, 0.5, impl="triton")
    with fastgen.use_backend("triton"):
        with pytest.raises(fastgen.BackendUnavailableError, match="TRITON_INTERPRET"):
            ddim_step(x, x, 0.3, 0.5)


def test_forcing_cpp_on_cuda_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(fastgen.BackendUnavailableError, match="impl='cpp' is not available on cuda"):
        backend.resolve("ddim_step", torch.device("cuda"), "cpp")


def test_forced_reference_gives_reference_results():
    x, e = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    from fastgen.ops.ddim_step import ddim_step_reference

    with fastgen.use_backend("torch"):
        got = ddim_step(x, e, 0.3, 0.5)
    want = ddim_step_reference(x, e, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    assert torch.equal(got.x_prev, want[0]) and torch.equal(got.x0_pred, want[1])


def test_registry_lists_ddim_step():
    spec = backend.registered_ops()["ddim_step"]
    assert set(spec.impls) == {"torch", "cpp", "triton"}
    assert spec.preference["cpu"][0] == "cpp"


def _run(code, **env):
    e = dict(os.environ)
    e.pop("TRITON_INTERPRET", None)
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)


def test_fastgen_backend_env_var():
    code = ("import torch, fastgen; from fastgen import backend; "
            "print(backend.resolve('ddim_step', torch.device('cpu')))")
    r = _run(code, FASTGEN_BACKEND="torch")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "torch"


def test_invalid_fastgen_backend_env_var_is_a_clear_error_at_dispatch():
    r = _run("import torch, fastgen\ntry:\n    fastgen.functional.ddim_step(torch.ones(2), torch.ones(2), 0.3, 0.5)\n"
             "except ValueError as e:\n    print('ERR', e)", FASTGEN_BACKEND="gpu")
    assert r.returncode == 0, r.stderr
    assert "ERR FASTGEN_BACKEND must be one of" in r.stdout
