"""Triton kernels for the fused DDIM/DDPM update and its backward.

One program handles BLOCK contiguous elements of dense tensors sharing one layout, with the
batch dimension outermost in memory. The alphas arrive as length-N fp32 tensors on the same
device (a scalar alpha is expanded by the launcher), so the kernels never need a host value:
that keeps them traceable by torch.compile and free of device syncs. The coefficients are
computed per element in fp32, in the cancellation-free form of csrc/include/fastgen/ddim.h
(the loads of the two alphas hit the same cache line for a whole sample).
"""
import triton
import triton.language as tl


@triton.jit
def _coeffs(offs, per_sample, at_ptr, ap_ptr, eta, mask):
    s = offs // per_sample
    a_t = tl.load(at_ptr + s, mask=mask, other=1.0).to(tl.float32)
    a_p = tl.load(ap_ptr + s, mask=mask, other=1.0).to(tl.float32)
    om_t = 1.0 - a_t
    om_p = 1.0 - a_p
    eta2 = eta * eta
    denom = a_p * om_t
    safe = (denom * eta2) > 0.0  # both factors are >= 0 for valid alphas
    denom_s = tl.where(safe, denom, 1.0)
    var = tl.where(safe, eta2 * om_p * (a_p - a_t) / denom_s, 0.0)
    dir2 = tl.where(safe, om_p * ((1.0 - eta2) * a_p * om_t + eta2 * a_t * om_p) / denom_s, om_p)
    s1 = tl.sqrt(om_t)
    inv = 1.0 / tl.sqrt(a_t)
    sap = tl.sqrt(a_p)
    d = tl.sqrt(tl.maximum(dir2, 0.0))
    sig = tl.sqrt(tl.maximum(var, 0.0))
    return s1, inv, sap, d, sig


@triton.jit
def ddim_fwd_kernel(x_ptr, e_ptr, n_ptr, xp_ptr, x0_ptr, at_ptr, ap_ptr,
                    numel, per_sample, eta, clip,
                    HAS_NOISE: tl.constexpr, CLIP: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(e_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s1, inv, sap, d, sig = _coeffs(offs, per_sample, at_ptr, ap_ptr, eta, mask)
    x0 = (x - s1 * e) * inv
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
    out = sap * x0 + d * e
    if HAS_NOISE:
        nz = tl.load(n_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = out + sig * nz
    tl.store(x0_ptr + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)
    tl.store(xp_ptr + offs, out.to(xp_ptr.dtype.element_ty), mask=mask)


@triton.jit
def ddim_bwd_kernel(x_ptr, e_ptr, gp_ptr, g0_ptr, dx_ptr, de_ptr, dn_ptr, at_ptr, ap_ptr,
                    numel, per_sample, eta, clip,
                    HAS_GP: tl.constexpr, HAS_G0: tl.constexpr, NEED_DN: tl.constexpr,
                    CLIP: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    s1, inv, sap, d, sig = _coeffs(offs, per_sample, at_ptr, ap_ptr, eta, mask)
    if HAS_GP:
        gp = tl.load(gp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        gp = tl.zeros([BLOCK], dtype=tl.float32)
    gx0 = sap * gp
    if HAS_G0:
        gx0 = gx0 + tl.load(g0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if CLIP:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        e = tl.load(e_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x0 = (x - s1 * e) * inv
        gx0 = tl.where((x0 > clip) | (x0 < -clip), 0.0, gx0)
    t = inv * gx0
    tl.store(dx_ptr + offs, t.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(de_ptr + offs, (d * gp - s1 * t).to(de_ptr.dtype.element_ty), mask=mask)
    if NEED_DN:
        tl.store(dn_ptr + offs, (sig * gp).to(dn_ptr.dtype.element_ty), mask=mask)
