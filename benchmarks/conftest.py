"""Benchmark harness configuration.

* CPU benchmarks run with a fixed thread count: ``FASTGEN_BENCH_THREADS`` (default: the CPUs
  this process may use, capped at 16), recorded in every benchmark's extra_info.
* CPU allocator caveat (docs/performance.md): fresh large CPU tensors cost page faults, and
  PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` changes that cost a lot. A timed run (``--benchmark-only``)
  without ``THP_MEM_ALLOC_ENABLE`` therefore re-runs itself once with ``THP_MEM_ALLOC_ENABLE=1``
  at the end (a second table; ``--benchmark-json=F`` writes ``F`` and ``F.thp.json``). Set
  ``FASTGEN_BENCH_NO_THP_RERUN=1`` to skip that.
"""
import os
import subprocess
import sys

import pytest
import torch

THREADS = int(os.environ.get("FASTGEN_BENCH_THREADS", min(len(os.sched_getaffinity(0)), 16)))
torch.set_num_threads(THREADS)
# glibc raises its mmap threshold (up to 32 MB) only after large blocks are freed, so in a fresh
# process every eager temporary above 128 KB is a fresh mmap with page faults, and eager looks
# much slower in the first benchmark than later. Warm it once, as a long-running process would
# be: this only makes the eager baselines faster (conservative for fastgen's speedups).
torch.empty(8 << 20).fill_(0)  # a 32 MB block, touched and freed at once
ALLOCATOR = "thp" if os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0") else "default"


def _timed_run(config) -> bool:
    opt = config.option
    return not getattr(opt, "benchmark_disable", False) and not getattr(opt, "benchmark_skip", False)


def pytest_report_header(config):
    return f"fastgen benchmarks: torch threads={THREADS}, CPU allocator={ALLOCATOR} (THP_MEM_ALLOC_ENABLE)"


_session = None


def _print_report(tr) -> None:
    from harness import RESULTS

    rows = [(n, i) for n, i in RESULTS if "fastgen_ms" in i]
    if not rows:
        return
    tr.write_sep("-", f"fastgen vs plain PyTorch (medians; CPU allocator={ALLOCATOR}, threads={THREADS})")
    tr.write_line(f"{'benchmark':48s} {'fastgen':>10s} {'eager':>17s} {'torch.compile':>17s} {'diffusers':>17s} "
                  f"{'GB/s':>7s} {'% copy bw':>9s}")
    for name, i in rows:
        def col(k):
            return f"{i[k + '_ms']:.4f} ({i['speedup_vs_' + k]:.2f}x)" if k + "_ms" in i else "-"
        bw = f"{i['fastgen_GBps']:.1f}" if "fastgen_GBps" in i else "-"
        pct = f"{i['pct_of_copy_bw']:.0f}%" if "pct_of_copy_bw" in i else "-"
        tr.write_line(f"{name[:48]:48s} {i['fastgen_ms']:>8.4f}ms {col('eager'):>17s} {col('compile'):>17s} "
                      f"{col('diffusers'):>17s} {bw:>7s} {pct:>9s}")
    tr.write_line("(ms; (Nx) = baseline time / fastgen time; % copy bw = achieved / dst.copy_(src) bandwidth "
                  "at the same working set, measured in this run)")


def pytest_sessionstart(session):
    global _session
    _session = session


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After this run's tables: the same benchmarks under the huge-page allocator (a subprocess,
    since the allocator setting is read when torch starts)."""
    _print_report(terminalreporter)
    session = _session
    if (ALLOCATOR == "thp" or not _timed_run(config) or os.environ.get("FASTGEN_BENCH_NO_THP_RERUN")
            or os.environ.get("FASTGEN_BENCH_CHILD")):
        return
    args = []
    for a in config.invocation_params.args:
        if a.startswith("--benchmark-json="):
            a = a + ".thp.json"
        args.append(a)
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1", FASTGEN_BENCH_CHILD="1")
    print("\n\nfastgen: re-running the benchmarks with THP_MEM_ALLOC_ENABLE=1 (huge-page CPU allocator)\n", flush=True)
    rc = subprocess.run([sys.executable, "-m", "pytest", *args], env=env, cwd=config.invocation_params.dir).returncode
    if rc not in (0, 5) and session is not None and session.exitstatus == 0:
        session.exitstatus = rc
