"""Triton device functions of fastgen's counter-based random stream (csrc/include/fastgen/philox.h;
the PyTorch reference is fastgen/ops/_philox.py): Philox4x32-10 on uint32 tensors, the uint32 ->
(0, 1] float map, and splitting a 64-bit seed into kernel arguments."""
import triton
import triton.language as tl

_MASK32 = 0xFFFFFFFF

# Philox constants (csrc/include/fastgen/philox.h)
_M0 = tl.constexpr(0xD2511F53)
_M1 = tl.constexpr(0xCD9E8D57)
_W0 = tl.constexpr(0x9E3779B9)
_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 tensors (c0..c3 same shape; k0, k1 uint32 scalars)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        n0 = hi1 ^ c1 ^ k0
        n2 = hi0 ^ c3 ^ k1
        c0 = n0
        c1 = lo1
        c2 = n2
        c3 = lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def to_unit(r):
    # ((r >> 8) + 0.5) * 2^-24 in fp32, as philox::to_unit
    return ((r >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08


def split64(v: int) -> tuple[int, int]:
    """A 64-bit value (int64 reinterpreted as uint64) as two int32-range ints (bit patterns of the
    uint32 halves): every launch then has the same argument types (no recompiles by value)."""
    v = int(v) & 0xFFFFFFFFFFFFFFFF

    def s32(h):
        return h - (1 << 32) if h >= (1 << 31) else h

    return s32(v & _MASK32), s32(v >> 32)
