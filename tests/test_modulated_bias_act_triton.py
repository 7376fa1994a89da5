"""The Triton modulated_bias_act kernels (fastgen/kernels/modulated_bias_act.py) on CPU tensors through
the Triton interpreter (TRITON_INTERPRET=1, set by conftest.py; on a GPU they run on CUDA tensors),
against float64 autograd of the reference: forward, the fused backward with its reductions, double
backward, layouts and dtypes. Small shapes: the interpreter is slow."""
import os

import pytest
import torch

pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET", "0") != "1" and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)

from fastgen.ops.bias_act import ACTIVATIONS  # noqa: E402

from mba_cases import COMBOS, check_impl, check_orders, make  # noqa: E402

DEV = "cpu" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "cuda"
ACTS = [a for a in ACTIVATIONS if a != "swish"]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_combination_of_optional_inputs(layout):
    for has_b, has_s, nk, sk in COMBOS:
        if not has_s and nk == "none":
            continue  # bias_act's kernels (tests/test_bias_act.py)
        ins = make((2, 3, 3, 2), b=has_b, scale=has_s, noise=nk, strength=sk, layout=layout, device=DEV)
        check_impl("triton", ins, what=f"b={has_b} scale={has_s} noise={nk} strength={sk} {layout}",
                   act="lrelu", clamp=2.5)


@pytest.mark.parametrize("act", ACTS)
def test_every_activation(act):
    for layout, clamp in (("contiguous", None), ("channels_last", 0.7)):
        ins = make((2, 3, 3, 2), layout=layout, noise="N1", strength="scalar", seed=1, device=DEV)
        check_impl("triton", ins, what=f"{act} {layout}", act=act, clamp=clamp)


@pytest.mark.parametrize("shape,layout", [((2, 5, 7), "channels_last"), ((2, 3, 2, 2, 3), "contiguous"),
                                          ((3, 7), "contiguous"), ((1, 70, 3, 3), "contiguous"),
                                          ((2, 3, 20, 15), "strided")])
def test_shapes_and_layouts(shape, layout):
    for nk, sk in (("11", "channel"), ("1C", "scalar")):
        ins = make(shape, noise=nk, strength=sk, layout=layout, seed=3, device=DEV)
        check_impl("triton", ins, what=f"{shape} {layout} noise={nk}", act="silu", clamp=2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    for layout, pdtype in (("contiguous", None), ("channels_last", torch.float32)):
        ins = make((2, 4, 3, 3), dtype=dtype, pdtype=pdtype, layout=layout, seed=4, device=DEV)
        check_impl("triton", ins, what=f"{dtype} {layout}", act="lrelu", clamp=2.0)


def test_empty():
    x, b, s, nz, st = make((0, 3, 2, 2), device=DEV)
    from fastgen.ops.modulated_bias_act import _triton_ops
    y = _triton_ops()(x, b, s, nz, st, 2, 0.2, 1.4, -1.0)
    assert y.shape == x.shape


@pytest.mark.parametrize("act,clamp,noise", [("lrelu", 1.5, "N1"), ("silu", None, "NC")])
def test_second_and_third_order(act, clamp, noise):
    check_orders("triton", (2, 3, 2, 2), act, clamp, noise, "channel", "contiguous", n_orders=3, device=DEV)


def test_opcheck_schema_and_autograd_registration():
    from fastgen.ops.modulated_bias_act import _triton_ops

    x, b, s, nz, st = make((2, 3, 2, 2), device=DEV)
    op = _triton_ops()
    torch.library.opcheck(op, (x, b, s, nz, st, 2, 0.2, 1.4, -1.0),
                          test_utils=("test_schema", "test_autograd_registration"))
    bwd = torch.ops.fastgen.modulated_bias_act_backward_triton.default
    torch.library.opcheck(bwd, (torch.randn_like(x), x, b, s, nz, st, 2, 0.2, 1.4, -1.0, *[True] * 5),
                          test_utils=("test_schema", "test_autograd_registration"))
