"""fastgen's noise stream: the pure-torch reference (fastgen/ops/_philox.py) against the Random123
known-answer vectors, exact 64-bit products, and csrc/include/fastgen/philox.h itself (compiled
with g++: Philox bit-exact; the polynomial log/sincos normals within a few 1e-6)."""
import random
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from fastgen.ops import _philox as P

ROOT = Path(__file__).resolve().parent.parent
GXX = shutil.which("g++")

# Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key, expected)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _py_philox(ctr, key):
    """Scalar Philox4x32-10 with Python ints (arbitrary precision): an independent oracle."""
    c, (k0, k1) = list(ctr), key
    for _ in range(10):
        p0, p1 = P.M0 * c[0], P.M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k1, p0 & 0xFFFFFFFF]
        k0, k1 = (k0 + P.W0) & 0xFFFFFFFF, (k1 + P.W1) & 0xFFFFFFFF
    return tuple(c)


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_known_answer_vectors(ctr, key, expected):
    got = P.philox4x32_10(torch.tensor(ctr), torch.tensor(key)).tolist()
    assert got == list(expected), [hex(v) for v in got]
    assert _py_philox(ctr, key) == expected


def test_known_answer_vectors_batched():
    ctr = torch.tensor([c for c, _, _ in KAT])
    key = torch.tensor([k for _, k, _ in KAT])
    assert P.philox4x32_10(ctr, key).tolist() == [list(e) for _, _, e in KAT]


def test_mulhilo_exact():
    rng = random.Random(1)
    a = [0, 1, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF] + [rng.getrandbits(32) for _ in range(2000)]
    at = torch.tensor(a, dtype=torch.int64)
    for m in (P.M0, P.M1, 0xFFFFFFFF, 1):
        hi, lo = P._mulhilo(at, m)
        assert hi.tolist() == [(v * m) >> 32 for v in a]
        assert lo.tolist() == [(v * m) & 0xFFFFFFFF for v in a]


def test_random_counters_match_python_ints():
    rng = random.Random(2)
    ctrs = [tuple(rng.getrandbits(32) for _ in range(4)) for _ in range(300)]
    keys = [tuple(rng.getrandbits(32) for _ in range(2)) for _ in range(300)]
    got = P.philox4x32_10(torch.tensor(ctrs), torch.tensor(keys)).tolist()
    assert [tuple(g) for g in got] == [_py_philox(c, k) for c, k in zip(ctrs, keys)]


def _expected_normals(numel, seed, offset):
    """The stream from the definition, element by element (Python ints + math, float64)."""
    import math

    s, o = seed & (2**64 - 1), offset & (2**64 - 1)
    out = []
    for i in range(numel):
        g = i >> 2
        r = _py_philox((g & 0xFFFFFFFF, g >> 32, o & 0xFFFFFFFF, o >> 32), (s & 0xFFFFFFFF, s >> 32))
        u = [float(torch.tensor(float(v >> 8), dtype=torch.float32) + 0.5) * 2.0**-24 for v in r]
        a, b = (u[0], u[1]) if (i & 3) < 2 else (u[2], u[3])
        rad = math.sqrt(-2.0 * math.log(a))
        out.append(rad * (math.cos(2 * math.pi * b) if (i & 1) == 0 else math.sin(2 * math.pi * b)))
    return torch.tensor(out, dtype=torch.float64).float()


@pytest.mark.parametrize("seed,offset", [(0, 0), (7, 3), (-1, -2), (2**63 - 1, 2**40 + 5)])
def test_stream_definition(seed, offset):
    z = P.philox_normal(37, seed, offset)
    assert z.dtype == torch.float32 and z.shape == (37,)
    torch.testing.assert_close(z, _expected_normals(37, seed, offset), rtol=0, atol=0)


def test_negative_seed_is_uint64():
    assert torch.equal(P.philox_normal(9, -1, -5), P.philox_normal(9, 2**64 - 1, 2**64 - 5))


def test_prefix_and_group_counter():
    """Element i depends only on i: shorter calls are prefixes; high counter words are used."""
    z = P.philox_normal(4099, 11, 1)
    assert torch.equal(P.philox_normal(13, 11, 1), z[:13])
    r = P.philox_uniform_bits(1, 5, 9)
    assert r[0].tolist() == list(_py_philox((0, 0, 9, 0), (5, 0)))


def test_statistics():
    z = P.philox_normal(1 << 18, 1234, 0).double()
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1.0) < 0.01
    assert torch.isfinite(z).all()
    # distinct offsets give (practically) independent streams
    z2 = P.philox_normal(1 << 18, 1234, 1).double()
    assert abs(torch.corrcoef(torch.stack([z, z2]))[0, 1].item()) < 0.01


def test_unit_interval_rounding():
    r = torch.tensor([0, 255, 1 << 31, 0xFFFFFFFF], dtype=torch.int64)
    u = P.to_unit(r)
    assert u.dtype == torch.float32
    assert u[0].item() == 0.5 * 2.0**-24 and u[1].item() == u[0].item()
    assert u[3].item() == 1.0  # (2^24 - 1) + 0.5 rounds to 2^24 in fp32, as in the kernels


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_normal_like_memory_order(layout):
    base = torch.empty(2, 3, 4, 5)
    t = {"contiguous": base, "channels_last": base.contiguous(memory_format=torch.channels_last),
         "transposed": base.transpose(-1, -2).contiguous().transpose(-1, -2)}[layout]
    z = P.philox_normal_like(t, 3, 4)
    assert z.shape == t.shape and z.stride() == t.stride() and z.dtype == torch.float32
    flat = z.as_strided((z.numel(),), (1,), 0)
    assert torch.equal(flat, P.philox_normal(t.numel(), 3, 4))
    assert P.philox_normal_like(t, 3, 4, dtype=torch.float16).dtype == torch.float16


# ------------------------------------------------------------------- against philox.h (g++)
_DRIVER = textwrap.dedent(r"""
    #include <cinttypes>
    #include <cmath>
    #include <cstdio>
    #include "fastgen/philox.h"
    using namespace fastgen::philox;
    int main() {
      char mode[8];
      while (std::scanf("%7s", mode) == 1) {
        if (mode[0] == 'P') {  // P c0 c1 c2 c3 k0 k1 -> r0 r1 r2 r3
          uint32_t c[4], k[2];
          if (std::scanf("%" SCNu32 " %" SCNu32 " %" SCNu32 " %" SCNu32 " %" SCNu32 " %" SCNu32,
                         &c[0], &c[1], &c[2], &c[3], &k[0], &k[1]) != 6) return 2;
          const U4 r = philox4x32_10(U4{c[0], c[1], c[2], c[3]}, k[0], k[1]);
          std::printf("%" PRIu32 " %" PRIu32 " %" PRIu32 " %" PRIu32 "\n", r.x, r.y, r.z, r.w);
        } else {  // N numel seed offset -> numel normals (the host polynomial path)
          long long n; unsigned long long seed, offset;
          if (std::scanf("%lld %llu %llu", &n, &seed, &offset) != 3) return 2;
          for (long long i = 0; i < n; ++i) std::printf("%.9g\n", normal_at(uint64_t(i), seed, offset));
        }
      }
      return 0;
    }
""")


@pytest.fixture(scope="module")
def philox_h(tmp_path_factory):
    if GXX is None:
        pytest.skip("g++ not found")
    d = tmp_path_factory.mktemp("philox_h")
    src, exe = d / "driver.cpp", d / "driver"
    src.write_text(_DRIVER)
    p = subprocess.run([GXX, "-std=c++17", "-O2", "-Wall", "-Werror", f"-I{ROOT / 'csrc' / 'include'}", str(src),
                        "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr

    def run(stdin: str) -> list[str]:
        q = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, timeout=300)
        assert q.returncode == 0, q.stderr
        return q.stdout.split("\n")[:-1]

    return run


def test_philox_h_rounds_bit_exact(philox_h):
    rng = random.Random(3)
    cases = [(c, k) for c, k, _ in KAT]
    cases += [(tuple(rng.getrandbits(32) for _ in range(4)), tuple(rng.getrandbits(32) for _ in range(2)))
              for _ in range(500)]
    lines = philox_h("".join(f"P {' '.join(map(str, c))} {' '.join(map(str, k))}\n" for c, k in cases))
    got = [tuple(int(v) for v in ln.split()) for ln in lines]
    want = P.philox4x32_10(torch.tensor([c for c, _ in cases]), torch.tensor([k for _, k in cases])).tolist()
    assert got == [tuple(w) for w in want]
    assert got[:3] == [e for _, _, e in KAT]


@pytest.mark.parametrize("seed,offset", [(0, 0), (2024, 7), (2**64 - 1, 2**33 + 1)])
def test_philox_h_normals_close(philox_h, seed, offset):
    """The C++ host normals (polynomial -2 ln u and sincos(2 pi u)) vs float64 math rounded once."""
    n = 1 << 16
    cpp = torch.tensor([float(v) for v in philox_h(f"N {n} {seed} {offset}\n")], dtype=torch.float64)
    ref = P.philox_normal(n, seed, offset).double()
    diff = (cpp - ref).abs()
    rel = diff / ref.abs().clamp_min(1.0)
    assert diff.max().item() < 2e-6, f"max |cpp - ref| = {diff.max().item():.3e}"
    assert rel.max().item() < 1e-6, f"max rel diff = {rel.max().item():.3e}"
