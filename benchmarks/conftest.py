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

import torch

THREADS = int(os.environ.get("FASTGEN_BENCH_THREADS", min(len(os.sched_getaffinity(0)), 16)))
torch.set_num_threads(THREADS)
ALLOCATOR = "thp" if os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0") else "default"


def _timed_run(config) -> bool:
    opt = config.option
    return not getattr(opt, "benchmark_disable", False) and not getattr(opt, "benchmark_skip", False)


def pytest_report_header(config):
    return f"fastgen benchmarks: torch threads={THREADS}, CPU allocator={ALLOCATOR} (THP_MEM_ALLOC_ENABLE)"


def pytest_sessionfinish(session, exitstatus):
    config = session.config
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
    if rc not in (0, 5) and session.exitstatus == 0:
        session.exitstatus = rc
