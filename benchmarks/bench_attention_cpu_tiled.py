"""attention on CPU: fastgen's tiled C++ kernels (``torch.ops.fastgen.attention_tiled`` and
``attention_tiled_backward``) against ATen's flash-attention CPU kernels
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its ``_backward``, what torch's SDPA runs
on CPU), on the same inputs, at shapes of diffusion U-Nets and SAGAN:

    (B, H, N_q, N_kv, D) = (4, 4, 256, 256, 64), (2, 8, 1024, 1024, 64), (1, 8, 4096, 4096, 64),
                           (2, 8, 1024, 1024, 40), cross-attention (4, 8, 1024, 77, 64)

in float32 and bfloat16. ``fwd``: both return (out, lse), both are checked. ``bwd``: both get the same
(grad_out, q, k, v, out, lse) (from ATen's forward) and return (dq, dk, dv). GFLOP/s are recorded
next to the medians (fwd 4 B H N_q N_kv D flops, bwd 2.5 times that). This table decides the CPU
dispatch rule in fastgen/ops/attention.py.

    python -m pytest benchmarks/bench_attention_cpu_tiled.py --benchmark-only   # FASTGEN_BENCH_THREADS=1|2
    python benchmarks/bench_attention_cpu_tiled.py --threads 1,2                # plain table, no pytest
"""
from __future__ import annotations

import math
import statistics
import sys
import time

import pytest
import torch

import fastgen  # noqa: F401  (loads the extension)

SHAPES = [(4, 4, 256, 256, 64), (2, 8, 1024, 1024, 64), (1, 8, 4096, 4096, 64), (2, 8, 1024, 1024, 40),
          (4, 8, 1024, 77, 64)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _inputs(shape, dtype):
    B, H, Nq, Nk, D = shape
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, H, Nq, D, generator=g).to(dtype), torch.randn(B, H, Nk, D, generator=g).to(dtype),
            torch.randn(B, H, Nk, D, generator=g).to(dtype))


def contenders(q, k, v, mode="fwd"):
    aten_ops = torch.ops.aten
    scale = 1.0 / math.sqrt(q.shape[-1])
    if mode == "fwd":
        tiled = lambda: torch.ops.fastgen.attention_tiled(q, k, v, None, scale)  # noqa: E731
        aten = lambda: aten_ops._scaled_dot_product_flash_attention_for_cpu(  # noqa: E731
            q, k, v, 0.0, False, scale=scale)[:2]
        return tiled, aten
    out, lse = aten_ops._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)[:2]
    lse = lse.contiguous()
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(q.dtype)
    tiled = lambda: torch.ops.fastgen.attention_tiled_backward(go, q, k, v, out, lse, None, scale)  # noqa: E731
    aten = lambda: aten_ops._scaled_dot_product_flash_attention_for_cpu_backward(  # noqa: E731
        go, q, k, v, out, lse, 0.0, False, scale=scale)
    return tiled, aten


def flops(shape, mode="fwd") -> float:
    B, H, Nq, Nk, D = shape
    return 4.0 * B * H * Nq * Nk * D * (2.5 if mode == "bwd" else 1.0)


@pytest.mark.skipif(not hasattr(torch.ops.fastgen, "attention_tiled"), reason="fastgen._C not built")
@pytest.mark.parametrize("mode", ["fwd", "bwd"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_attention_tiled_vs_aten_flash(benchmark, shape, dtype, mode):
    from harness import compare

    dt = DTYPES[dtype]
    tiled, aten = contenders(*_inputs(shape, dt), mode=mode)
    tol = TOL[dt] * (5 if mode == "bwd" and dt == torch.bfloat16 else 1)  # bf16 grads: sums of N rounded terms
    info = compare(benchmark, tiled, {"aten_flash": aten}, device=torch.device("cpu"), rtol=tol, atol=tol,
                   check_against="aten_flash", heavy=shape[2] >= 4096,
                   group=f"attention {mode} CPU {dtype} (B, H, Nq, Nk, D) = {shape}")
    if "fastgen_ms" in info:
        info["fastgen_GFLOPs"] = round(flops(shape, mode) / info["fastgen_ms"] / 1e6, 1)
        info["aten_flash_GFLOPs"] = round(flops(shape, mode) / info["aten_flash_ms"] / 1e6, 1)


# ----------------------------------------------------------------------------- plain table
def _median_time(fn, min_time: float) -> float:
    fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def table(threads=(1, 2), modes=("fwd", "bwd"), rounds: int = 7, min_time: float = 0.1) -> list[dict]:
    """Medians over ``rounds`` of per-round medians, the two kernels taking turns within each round."""
    rows = []
    for nt, mode, shape, (name, dt) in ((nt, m, s, d) for nt in threads for m in modes for s in SHAPES
                                        for d in DTYPES.items()):
        torch.set_num_threads(nt)
        tiled, aten = contenders(*_inputs(shape, dt), mode=mode)
        got, want = tiled(), aten()
        tol = TOL[dt] * (5 if mode == "bwd" and dt == torch.bfloat16 else 1)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol)
        t_ours, t_aten = [], []
        for _ in range(rounds):
            t_ours.append(_median_time(tiled, min_time))
            t_aten.append(_median_time(aten, min_time))
        o, a = statistics.median(t_ours), statistics.median(t_aten)
        row = dict(threads=nt, mode=mode, shape=shape, dtype=name, fastgen_ms=o * 1e3, aten_ms=a * 1e3,
                   speedup=a / o, fastgen_gflops=flops(shape, mode) / o / 1e9,
                   aten_gflops=flops(shape, mode) / a / 1e9)
        rows.append(row)
        print(f"{nt:>2} thr {mode}  {str(shape):26s} {name:4s}  fastgen {row['fastgen_ms']:9.3f} ms "
              f"({row['fastgen_gflops']:5.0f} GFLOP/s)   aten {row['aten_ms']:9.3f} ms "
              f"({row['aten_gflops']:5.0f} GFLOP/s)   {row['speedup']:4.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--modes", default="fwd,bwd")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, fastgen tiled ISA level {torch.ops.fastgen.attention_tiled_isa_level()}, "
          f"THP_MEM_ALLOC_ENABLE={__import__('os').environ.get('THP_MEM_ALLOC_ENABLE', '0')}", file=sys.stderr)
    table(tuple(int(t) for t in args.threads.split(",")), tuple(args.modes.split(",")), rounds=args.rounds)
