"""The CPU kernels compute the right thing at every x86-64 ISA level, not only this machine's.

csrc/cpu/ddim_step.cpp is built with GCC ``target_clones`` (x86-64-v4, x86-64-v3, default) and the
dynamic loader picks one clone at run time, so the extension's own tests only ever run the clone
for the machine they run on. Here the kernel source is compiled together with a standalone C++
driver (tests/cpp/ddim_cpu_driver.cpp, no torch) once per ISA level with
``-DFASTGEN_NO_CLONES -march=<level>``, run, and checked against the driver's double-precision
reference (forward/backward, fp32/fp16/bf16, noise, clip, per-sample coefficients, mid-sample
[begin, end) ranges, null optional pointers). Levels the running CPU cannot execute are skipped.

A second group checks the shipped build (no -march, clones on): the object exposes the clones and
their resolvers, and the driver passes through the loader-selected clone.

csrc/cpu/upfirdn2d.cpp has its own driver (tests/cpp/upfirdn2d_cpu_driver.cpp: both layouts, strided
inputs, split work ranges, fp32/fp16/bf16/fp64, against a double-precision naive evaluation), run
at the baseline and x86-64-v3 levels: on an AVX-512 machine the extension's own tests only reach
the v4 clone (and its compile is the slowest of the kernels, so the other levels are not repeated).
"""
from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_DIR = ROOT / "csrc" / "cpu"
KERNEL = CPU_DIR / "ddim_step.cpp"
DRIVER = Path(__file__).resolve().parent / "cpp" / "ddim_cpu_driver.cpp"
INCLUDES = [f"-I{ROOT / 'csrc' / 'include'}", f"-I{CPU_DIR}"]

LEVELS = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
# The six entry points ddim_step.cpp compiles with target_clones.
DDIM_CLONED = [f"{d}_{t}" for d in ("forward", "backward") for t in ("f32", "f16", "bf16")]
# Macros the driver reports, expected per -march level (checks that -march really took effect).
EXPECTED_MACROS = {
    "x86-64": {"sse4_2": 0, "avx2": 0, "avx512f": 0},
    "x86-64-v2": {"sse4_2": 1, "avx2": 0, "avx512f": 0},
    "x86-64-v3": {"sse4_2": 1, "avx2": 1, "fma": 1, "f16c": 1, "avx512f": 0},
    "x86-64-v4": {"sse4_2": 1, "avx2": 1, "fma": 1, "f16c": 1, "avx512f": 1},
}
# /proc/cpuinfo flags each level needs (fallback when the __builtin_cpu_supports probe fails).
CPUINFO_FLAGS = {
    "x86-64-v2": {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"},
    "x86-64-v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}

GXX = shutil.which("g++")
pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only"),
    pytest.mark.skipif(GXX is None, reason="g++ not found"),
]


def _build_flags() -> tuple[list[str], list[str]]:
    """The extension's own compile/link flags (fastgen/_buildinfo.py, loaded without importing fastgen)."""
    cxx, link = ["-O3", "-fopenmp", "-fno-math-errno"], ["-fopenmp"]
    path = ROOT / "fastgen" / "_buildinfo.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("_fastgen_buildinfo_for_tests", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cxx, link = list(mod.CXX_FLAGS), list(mod.LINK_FLAGS)
    return ["-std=c++17", *cxx], link


CXX_FLAGS, LINK_FLAGS = _build_flags()


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _show(cmd: list[str], p: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(map(str, cmd))}\n(exit {p.returncode})\n{p.stdout}{p.stderr}"


def _compile_driver(exe: Path, extra: list[str]) -> None:
    cmd = [GXX, *CXX_FLAGS, *extra, *INCLUDES, str(DRIVER), str(KERNEL), "-o", str(exe), *LINK_FLAGS]
    p = _run(cmd)
    assert p.returncode == 0, f"building the driver failed:\n{_show(cmd, p)}"


def _run_driver(exe: Path) -> str:
    p = _run([str(exe)], timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "PASS" in p.stdout, f"{exe.name} failed (exit {p.returncode}):\n{out}"
    return out


@pytest.fixture(scope="module")
def supported_levels(tmp_path_factory) -> set[str]:
    """ISA levels this CPU (and OS) can execute, from a tiny __builtin_cpu_supports probe."""
    d = tmp_path_factory.mktemp("isa_probe")
    src, exe = d / "probe.cpp", d / "probe"
    src.write_text(
        "#include <cstdio>\n"
        "int main() {\n"
        "  __builtin_cpu_init();\n"
        '  std::puts("x86-64");\n'
        '  if (__builtin_cpu_supports("x86-64-v2")) std::puts("x86-64-v2");\n'
        '  if (__builtin_cpu_supports("x86-64-v3")) std::puts("x86-64-v3");\n'
        '  if (__builtin_cpu_supports("x86-64-v4")) std::puts("x86-64-v4");\n'
        "}\n"
    )
    p = _run([GXX, "-O1", str(src), "-o", str(exe)])
    if p.returncode == 0:
        q = _run([str(exe)])
        if q.returncode == 0:
            return set(q.stdout.split())
    # Fallback: /proc/cpuinfo flags (older compilers lack the level names in __builtin_cpu_supports).
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    levels = {"x86-64"}
    for lvl in LEVELS[1:]:
        if CPUINFO_FLAGS[lvl] <= flags:
            levels.add(lvl)
        else:
            break
    return levels


UPFIRDN_KERNEL = CPU_DIR / "upfirdn2d.cpp"
UPFIRDN_CLONED = [f"{k}_{t}" for k in ("nchw", "cl") for t in ("f32", "f16", "bf16", "f64")]
UPFIRDN_DRIVER = Path(__file__).resolve().parent / "cpp" / "upfirdn2d_cpu_driver.cpp"


@pytest.mark.parametrize("level", ["x86-64", "x86-64-v3"])
def test_upfirdn2d_cpu_kernels_at_isa_level(level, supported_levels, tmp_path):
    if level not in supported_levels:
        pytest.skip(f"this CPU cannot run {level} code (supports {sorted(supported_levels)})")
    exe = tmp_path / f"upfirdn2d_driver_{level}"
    cmd = [GXX, *CXX_FLAGS, f"-march={level}", "-DFASTGEN_NO_CLONES", *INCLUDES, str(UPFIRDN_DRIVER),
           str(UPFIRDN_KERNEL), "-o", str(exe), *LINK_FLAGS]
    p = _run(cmd)
    assert p.returncode == 0, f"building the driver failed:\n{_show(cmd, p)}"
    _run_driver(exe)


@pytest.mark.parametrize("level", LEVELS)
def test_ddim_cpu_kernels_at_isa_level(level, supported_levels, tmp_path):
    if level not in supported_levels:
        pytest.skip(f"this CPU cannot run {level} code (supports {sorted(supported_levels)})")
    exe = tmp_path / f"ddim_driver_{level}"
    _compile_driver(exe, [f"-march={level}", "-DFASTGEN_NO_CLONES"])
    out = _run_driver(exe)
    m = re.search(r"isa_macros: (.*)", out)
    assert m, f"driver did not report its ISA macros:\n{out}"
    macros = {k: int(v) for k, v in re.findall(r"(\w+)=(\d)", m.group(1))}
    for name, want in EXPECTED_MACROS[level].items():
        assert macros.get(name) == want, f"-march={level} built with {name}={macros.get(name)}:\n{out}"


def test_ddim_cpu_kernels_shipped_build(tmp_path):
    """As the extension is built (clones on, no -march): the loader-selected clone is correct."""
    exe = tmp_path / "ddim_driver_clones"
    _compile_driver(exe, [])
    _run_driver(exe)


# ------------------------------------------------------------------ the clones exist


def _sources_with_clones() -> list[Path]:
    return sorted(p for p in CPU_DIR.glob("*.cpp") if re.search(r"\bFG_CLONES\b|target_clones", p.read_text()))


_OBJECTS: dict[Path, Path] = {}


def _compile_object(src: Path, obj: Path) -> Path:
    """src compiled as the extension builds it; each source once per session (both object-code
    tests read the same object)."""
    if src in _OBJECTS and _OBJECTS[src].is_file():
        return _OBJECTS[src]
    cmd = [GXX, *CXX_FLAGS, "-fPIC", *INCLUDES, "-c", str(src), "-o", str(obj)]
    p = _run(cmd)
    assert p.returncode == 0, f"compiling {src.name} failed:\n{_show(cmd, p)}"
    _OBJECTS[src] = obj
    return obj


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm not found")
@pytest.mark.parametrize("src", _sources_with_clones(), ids=lambda p: p.name)
def test_default_build_has_target_clones(src, tmp_path_factory):
    obj = _compile_object(src, tmp_path_factory.mktemp("objects") / f"{src.stem}.o")
    p = _run(["nm", str(obj)])
    assert p.returncode == 0, p.stderr
    symbols = {}  # name -> nm type letter
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            symbols[parts[-1]] = parts[-2]
    bases = sorted({s[: -len(".arch_x86_64_v4")] for s in symbols if s.endswith(".arch_x86_64_v4")})
    assert bases, f"{src.name}: no x86-64-v4 clones in the default build; nm says:\n{p.stdout}"
    problems = []
    for base in bases:
        for suffix in (".arch_x86_64_v3", ".default", ".resolver"):
            if base + suffix not in symbols:
                problems.append(f"{base}: no {suffix} clone")
        if symbols.get(base) != "i":
            problems.append(f"{base}: not an ifunc symbol (nm type {symbols.get(base)!r}, expected 'i')")
    if src == UPFIRDN_KERNEL:
        for name in UPFIRDN_CLONED:
            if not any(re.search(rf"\d{name}E", b) for b in bases):
                problems.append(f"entry point {name} is not cloned")
    if src == KERNEL:
        for name in DDIM_CLONED:
            if not any(re.search(rf"\d{name}E", b) for b in bases):
                problems.append(f"entry point {name} is not cloned")
    assert not problems, f"{src.name}:\n  " + "\n  ".join(problems) + f"\nclone bases: {bases}"


def _functions(disassembly: str) -> dict[str, list[str]]:
    funcs, current = {}, None
    for line in disassembly.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            current = m.group(1)
            funcs[current] = []
        elif current is not None and line.strip():
            funcs[current].append(line)
    return funcs


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not found")
@pytest.mark.parametrize("src", _sources_with_clones(), ids=lambda p: p.name)
def test_clones_contain_their_hot_loops(src, tmp_path_factory):
    """A v3/v4 clone that calls a plain (un-cloned) local function runs that code at baseline ISA."""
    obj = _compile_object(src, tmp_path_factory.mktemp("objects") / f"{src.stem}.o")
    p = _run(["objdump", "-d", "-C", "--no-show-raw-insn", str(obj)])
    assert p.returncode == 0, p.stderr
    funcs = _functions(p.stdout)
    offenders = set()
    for name, body in funcs.items():
        if "[clone .arch_x86_64_v" not in name:
            continue
        for line in body:
            m = re.search(r"\bcall\s+[0-9a-f]+ <(.+)>\s*$", line)
            if not m:
                continue
            target = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
            if target != name and target in funcs and "[clone ." not in target:
                offenders.add(f"{name}\n      calls {target}")
    assert not offenders, "clones calling code compiled for the baseline ISA:\n  " + "\n  ".join(sorted(offenders))
