"""attention: fastgen.functional.attention against the textbook eager formula
``softmax(q k^T / sqrt(d)) v`` (which materialises the N x N matrix) and torch's own SDPA, on the
same inputs, fp32, (B, H, N, d) = (4, 4, N, 64).

* ``fwd``: the output only; ``fwd+bwd``: the output and dq, dk, dv for a fixed upstream grad.
* N = 1024 (fwd, fwd+bwd) and 4096 (fwd; with timing enabled it also records the peak resident
  memory of a fresh process running each contender once: O(N) extra memory vs O(N^2)).
"""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fastgen import backend
from fastgen.functional import attention
from harness import compare

B, H, D = 4, 4, 64
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def naive(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _with_grads(fn, args, go):
    def run():
        out = fn(*args)
        return (out.detach(),) + tuple(torch.autograd.grad(out, args, go))
    return run


# VmHWM (peak RSS of this process image; unlike ru_maxrss it does not inherit the parent's peak)
_PEAK_SCRIPT = """
import sys, torch
from fastgen.functional import attention

def hwm_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

n, kind = int(sys.argv[1]), sys.argv[2]
q, k, v = (torch.randn(4, 4, n, 64) for _ in range(3))
base = hwm_kb()
if kind == "fastgen":
    attention(q, k, v)
elif kind == "sdpa":
    torch.nn.functional.scaled_dot_product_attention(q, k, v)
else:
    torch.softmax(q @ k.transpose(-1, -2) * 0.125, dim=-1) @ v
print((hwm_kb() - base) / 1024)
"""


def _peak_extra_mb(n: int, kind: str) -> float:
    """Peak resident memory (MB) a fresh process adds running one forward (inputs already allocated)."""
    res = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n), kind], capture_output=True, text=True,
                         timeout=300, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, mode", [(1024, "fwd"), (1024, "fwd+bwd"), (4096, "fwd")])
def test_attention_fp32(benchmark, device, n, mode):
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(B, H, n, D, generator=g).to(dev) for _ in range(3))
    if mode == "fwd":
        fast = lambda: attention(*args)  # noqa: E731
        baselines = {"eager": lambda: naive(*args), "sdpa": lambda: sdpa(*args)}
    else:
        args = tuple(a.requires_grad_() for a in args)
        go = torch.randn(B, H, n, D, generator=g).to(dev)
        fast = _with_grads(attention, args, go)
        baselines = {"eager": _with_grads(naive, args, go), "sdpa": _with_grads(sdpa, args, go)}
    info = compare(benchmark, fast, baselines, device=dev, rtol=1e-4, atol=1e-5, heavy=n >= 4096,
                   group=f"attention {mode} fp32 (B, H, N, d) = {(B, H, n, D)}")
    info.update(impl=backend.resolve("attention", dev), n=n, mode=mode)
    if n >= 4096 and dev.type == "cpu" and sys.platform == "linux" and not getattr(benchmark, "disabled", False):
        for kind in ("fastgen", "sdpa", "eager"):
            info[f"{kind}_peak_extra_MB"] = round(_peak_extra_mb(n, "naive" if kind == "eager" else kind), 1)


CUDA_HALF_CASES = [  # (B, H, N_q, N_kv, D): SD-style U-Net self-attention, head dim 128, cross-attention
    (4, 8, 4096, 4096, 64), (2, 8, 4096, 4096, 128), (2, 16, 1024, 1024, 80), (8, 8, 4096, 77, 64)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton flash-attention kernels need a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CUDA_HALF_CASES, ids=[str(c) for c in CUDA_HALF_CASES])
def test_attention_cuda_half(benchmark, case, mode, dtype):
    """Triton flash attention vs torch's SDPA (flash/cuDNN) and the eager formula on a GPU; records
    TFLOP/s (4 N_q N_kv D multiply-adds forward, 2.5x that for the backward)."""
    B_, H_, nq, nk, d = case
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B_, H_, nq, d, device=dev, generator=g, dtype=dtype)
    k, v = (torch.randn(B_, H_, nk, d, device=dev, generator=g, dtype=dtype) for _ in range(2))
    args = (q, k, v)
    if mode == "fwd":
        fast = lambda: attention(*args, impl="triton")  # noqa: E731
        baselines = {"sdpa": lambda: sdpa(*args), "eager": lambda: naive(*args)}
    else:
        args = tuple(a.requires_grad_() for a in args)
        go = torch.randn(B_, H_, nq, d, device=dev, generator=g, dtype=dtype)
        fast = _with_grads(lambda *a: attention(*a, impl="triton"), args, go)
        baselines = {"sdpa": _with_grads(sdpa, args, go), "eager": _with_grads(naive, args, go)}
    info = compare(benchmark, fast, baselines, device=dev, rtol=2e-2, atol=2e-2, check_against="sdpa",
                   group=f"attention {mode} {dtype} cuda (B, H, N_q, N_kv, d) = {case}")
    flops = 4.0 * B_ * H_ * nq * nk * d * (1.0 if mode == "fwd" else 3.5)
    if "fastgen_ms" in info:
        info["fastgen_TFLOPs"] = round(flops / (info["fastgen_ms"] * 1e-3) / 1e12, 1)
        info["sdpa_TFLOPs"] = round(flops / (info["sdpa_ms"] * 1e-3) / 1e12, 1)
