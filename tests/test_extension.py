"""Loading fastgen._C: the prebuilt module, the just-in-time build (cached, one line of output,
stale locks broken) and the fallback to the references with exactly one warning."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastgen
from fastgen import _extension

PROBE = r"""
import json, warnings, torch
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import fastgen
    from fastgen import backend
    from fastgen.functional import ddim_step
    x = torch.randn(2, 3, 4, 4); e = torch.randn_like(x)
    out = ddim_step(x, e, 0.3, 0.6)
    out = ddim_step(x, e, 0.3, 0.6)
    from fastgen.ops.ddim_step import ddim_step_reference
    ref = ddim_step_reference(x, e, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64))
st = fastgen._extension.status()
print(json.dumps({
    "status": {k: v for k, v in st.items()},
    "impl": backend.resolve("ddim_step", torch.device("cpu")),
    "warnings": [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)],
    "max_diff": (out.x_prev - ref[0]).abs().max().item(),
}))
"""


def _probe(tmp_path, **env):
    e = dict(os.environ)
    e.pop("TRITON_INTERPRET", None)
    e["FASTGEN_CACHE_DIR"] = str(tmp_path / "cache")
    e.update(env)
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=e, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_prebuilt_extension_is_loaded_here():
    st = _extension.status()
    if not st["loaded"]:
        pytest.skip(f"extension not available in this environment: {st['error']}")
    assert st["cpu_capability"].startswith(("x86-64", "generic"))
    assert fastgen.backend.resolve("ddim_step", __import__("torch").device("cpu")) == "cpp"


def test_fallback_when_build_fails_warns_once(tmp_path):
    # A compiler that always fails: the just-in-time build fails, fastgen still imports and works.
    info, stderr = _probe(tmp_path, FASTGEN_FORCE_JIT="1", CXX="false")
    assert info["status"]["loaded"] is False
    assert "just-in-time build failed" in info["status"]["error"]
    assert info["impl"] == "torch"
    assert len(info["warnings"]) == 1, info["warnings"]
    assert "Falling back to the reference" in info["warnings"][0]
    assert info["max_diff"] == 0.0


def test_no_jit_means_no_build(tmp_path):
    info, stderr = _probe(tmp_path, FASTGEN_FORCE_JIT="1", FASTGEN_NO_JIT="1")
    assert info["status"]["loaded"] is False
    assert "FASTGEN_NO_JIT" in info["status"]["error"]
    assert "building" not in stderr
    assert len(info["warnings"]) == 1


def test_info_explains_missing_extension(tmp_path):
    e = dict(os.environ, FASTGEN_FORCE_JIT="1", FASTGEN_NO_JIT="1", FASTGEN_CACHE_DIR=str(tmp_path))
    e.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-m", "fastgen", "info"], capture_output=True, text=True, env=e,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "FASTGEN_NO_JIT" in r.stdout


@pytest.mark.skipif(not (Path(fastgen.__file__).parent.parent / "csrc" / "ops.cpp").exists(),
                    reason="needs the source tree")
def test_just_in_time_build_then_cache(tmp_path):
    """The real JIT path: build once into the cache (one line on stderr), reuse it afterwards, and
    break a stale lock file left by a killed build instead of hanging on it."""
    info, stderr = _probe(tmp_path, FASTGEN_FORCE_JIT="1")
    assert info["status"]["loaded"] is True, info
    assert info["status"]["how"] == "just-in-time build"
    assert info["impl"] == "cpp"
    assert info["warnings"] == []
    assert info["max_diff"] < 1e-6
    lines = [ln for ln in stderr.splitlines() if ln.startswith("fastgen:")]
    assert len(lines) == 1 and "just in time" in lines[0]

    so = Path(info["status"]["file"])
    build_dir = so.parent
    # a stale lock (as left by a killed build) must not make the next import hang
    lock = build_dir / "lock"
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    built = so.stat().st_mtime_ns
    info2, _ = _probe(tmp_path, FASTGEN_FORCE_JIT="1")
    assert info2["status"]["loaded"] is True and info2["status"]["file"] == str(so)
    assert so.stat().st_mtime_ns == built  # reused the cached build (no recompilation)
    assert not lock.exists()
