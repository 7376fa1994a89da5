"""Shared benchmark helpers: time fastgen against plain PyTorch on the same inputs, check they
agree, and record speedups and bandwidth in pytest-benchmark's extra_info.

Every comparison asserts numerical agreement first, so ``pytest benchmarks/ --benchmark-disable``
is a fast equivalence test of everything the benchmarks time.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from conftest import ALLOCATOR, THREADS


RESULTS: list[tuple[str, dict]] = []  # (benchmark name, extra_info), printed by conftest at the end


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable, device: torch.device, min_time: float = 0.3, max_rounds: int = 500,
                warmup: int = 3, min_calls: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds (CUDA: triton.testing.do_bench, in ms -> s)."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=max(100, int(min_time * 1000)), return_mode="median") / 1e3
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_rounds and (time.perf_counter() - start < min_time or len(times) < min_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_fn(nbytes: int, device: torch.device) -> Callable:
    """``dst.copy_(src)`` with a working set of ``nbytes`` (half read, half written). Both buffers
    are written first: untouched pages would map the shared zero page and flatter the copy."""
    n = max(nbytes // 2 // 4, 1)
    src = torch.ones(n, device=device)
    dst = torch.zeros(n, device=device)
    return lambda: dst.copy_(src)


def interleaved_medians(fns: dict[str, Callable], device: torch.device, rounds: int = 7,
                        min_time: float = 0.05, min_calls: int = 5) -> dict[str, float]:
    """Median over ``rounds`` of each function's median time, the functions taking turns, so slow
    drifts of a shared machine hit every contender alike (ratios are what we report)."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            per[k].append(median_time(fn, device, min_time=min_time, warmup=2 if min_calls > 1 else 0,
                                      min_calls=min_calls))
    return {k: statistics.median(v) for k, v in per.items()}


def peak_memory_mb(fn: Callable, device: torch.device) -> float | None:
    """Extra device memory (MB) one call of ``fn`` allocates at its peak, above what was allocated
    before it (outputs included). CUDA only (``torch.cuda.max_memory_allocated``); None on CPU, where
    the only cheap measure, the process's RSS high-water mark, is process-wide and never falls, so it
    cannot be attributed to one contender."""
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return round(peak / 2**20, 2)


def assert_outputs_close(got, want, rtol: float, atol: float, what: str) -> None:
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"{what} output {i}: {m}")


def compare(benchmark, fastgen_fn: Callable, baselines: dict[str, Callable], *, device: torch.device,
            nbytes: int | None = None, rtol: float = 1e-5, atol: float = 1e-5, group: str | None = None,
            check_against: str | None = "eager", unchecked: tuple[str, ...] = (), heavy: bool = False) -> dict:
    """Benchmark ``fastgen_fn`` (pytest-benchmark's table) and the ``baselines`` (same inputs).

    Asserts ``fastgen_fn()`` equals ``baselines[check_against]()`` (``check_against=None``: the
    caller compared them itself, e.g. a stochastic step with shared explicit noise); with timing enabled, also checks
    every other baseline's output (except those in ``unchecked``: baselines that draw their own
    random noise, timed as users would write them, while ``check_against`` is given fastgen's), then times fastgen, every baseline and (for memory-bound ops,
    ``nbytes`` = bytes the op must move) a copy of the same working set, taking turns
    (:func:`interleaved_medians`), and records in extra_info: each median (ms), fastgen's speedup
    over each baseline, the achieved GB/s and its percentage of the copy bandwidth, and on CUDA the
    peak extra memory of one call of each contender (``<name>_peak_MB``, :func:`peak_memory_mb`).
    ``heavy=True`` (end-to-end cases of a second or more per call): 3 pytest-benchmark rounds
    and 3 interleaved rounds of one call each, after one warm-up call per contender.
    """
    got = fastgen_fn()
    if check_against is not None:
        assert_outputs_close(got, baselines[check_against](), rtol, atol, f"fastgen vs {check_against}")
    benchmark.group = (group or benchmark.name) + f" [{device.type}, alloc={ALLOCATOR}]"
    info = benchmark.extra_info
    info.update(device=str(device), threads=THREADS, allocator=ALLOCATOR)
    RESULTS.append((benchmark.name, info))
    if getattr(benchmark, "disabled", False):
        benchmark(fastgen_fn)
        return info
    for name, fn in baselines.items():
        if name != check_against and name not in unchecked:
            assert_outputs_close(got, fn(), rtol, atol, f"fastgen vs {name}")
    if heavy:
        benchmark.pedantic(fastgen_fn, rounds=3, warmup_rounds=0, setup=lambda: sync(device))
    elif device.type == "cuda":
        benchmark.pedantic(fastgen_fn, rounds=20, warmup_rounds=3, setup=lambda: sync(device))
    else:
        rounds = max(5, min(200, int(0.3 / max(median_time(fastgen_fn, device, 0.05), 1e-6))))
        benchmark.pedantic(fastgen_fn, rounds=rounds, warmup_rounds=3)
    contenders = {"fastgen": fastgen_fn, **baselines}
    if nbytes:
        contenders["copy"] = copy_fn(nbytes, device)
    if heavy:
        for fn in contenders.values():
            fn()  # one warm-up call each
        t = interleaved_medians(contenders, device, rounds=3, min_time=0.0, min_calls=1)
    else:
        t = interleaved_medians(contenders, device)
    t_fast = t["fastgen"]
    info["fastgen_ms"] = round(t_fast * 1e3, 4)
    for name in baselines:
        info[f"{name}_ms"] = round(t[name] * 1e3, 4)
        info[f"speedup_vs_{name}"] = round(t[name] / t_fast, 2)
    if device.type == "cuda":  # one extra call each, after the timing (the caches are warm)
        for name, fn in {"fastgen": fastgen_fn, **baselines}.items():
            info[f"{name}_peak_MB"] = peak_memory_mb(fn, device)
    if nbytes:
        info["fastgen_GBps"] = round(nbytes / t_fast / 1e9, 1)
        info["copy_GBps"] = round(nbytes / t["copy"] / 1e9, 1)
        info["pct_of_copy_bw"] = round(100 * t["copy"] / t_fast, 1)
    return info
