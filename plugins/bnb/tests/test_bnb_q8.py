"""The int8-activation decode path (torch.ops.qcore_bnb.lut4_gemm_q8) within its error bound of the exact product.

x is quantized to int8 per 64 values (error <= dx/2 per element, dx = max|x| / 127) and the NF4/FP4 code to
int8 (error <= max|code| / 254 per value, times the block's absmax). The bound below adds those two
roundings, their product and a float32 accumulation term; the result must lie within it of a float64
product with the exactly dequantized weight, in every SIMD variant and in the torch fallback.
"""

import bitsandbytes.functional as bnbF
import pytest
import torch

from qcore import lut4
from qcore.testing import without_native_kernels
from qcore_bnb import ops


def _variants():
    lib = ops.library()
    assert lib is not None, "qcore_bnb/_kernels*.so is missing: reinstall the plugin with a C compiler"
    names = ["portable", *(["avx2"] if lib.qcbnb_cpu_isa() >= 1 else [])]
    lib.qcbnb_set_isa_cap(3)
    if lib.qcbnb_q8_isa() == 3:
        names.append("avx512vnni")
    return [*names, "torch"]


@pytest.fixture(params=_variants())
def variant(request, monkeypatch):
    lib = ops.library()
    if request.param == "torch":
        without_native_kernels(monkeypatch)
    else:
        lib.qcbnb_set_isa_cap({"portable": 0, "avx2": 1, "avx512vnni": 3}[request.param])
        assert lut4.ISA_NAMES[lib.qcbnb_q8_isa()] == request.param
    yield request.param
    lib.qcbnb_set_isa_cap(3)


def error_bound(x: torch.Tensor, w: torch.Tensor, absmax: torch.Tensor, blocksize: int, code: torch.Tensor) -> torch.Tensor:
    """(m, n) float64: the most the int8 path may differ from x @ w.T (w the exactly dequantized weight)."""
    m, k = x.shape
    n = w.shape[0]
    xd, wd = x.double(), w.double()
    dx = xd.abs().view(m, -1, 64).amax(-1) / 127  # (m, k/64)
    x_err = (dx / 2).repeat_interleave(64, dim=1)  # per element
    code_err = code.double().abs().max() / 254
    w_err = (absmax.double().view(n, -1) * code_err).repeat_interleave(blocksize, dim=1)  # (n, k)
    bound = x_err @ wd.abs().T + xd.abs() @ w_err.T + x_err @ w_err.T
    return bound + 1e-5 * (xd.abs() @ wd.abs().T)  # float32 accumulation


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(("rows", "shape", "blocksize"), [(1, (96, 256), 64), (3, (40, 512), 128), (8, (17, 192), 64)])
def test_int8_activation_gemm_is_within_its_error_bound(variant, quant_type, rows, shape, blocksize):
    torch.manual_seed(7)
    w = torch.randn(*shape)
    packed, state = bnbF.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
    dequantized = bnbF.dequantize_4bit(packed, state)  # the oracle's exact weight
    x = torch.randn(rows, shape[1])
    x[:, 3] = 25.0  # an outlier raises its block's dx: the bound must follow
    code_i8, scale_inv = lut4.int8_code(state.code)
    got = torch.ops.qcore_bnb.lut4_gemm_q8(x, packed.view(-1), state.absmax, code_i8, scale_inv, *shape, blocksize)
    exact = x.double() @ dequantized.double().T
    bound = error_bound(x, dequantized, state.absmax, blocksize, state.code)
    err = (got.double() - exact).abs()
    assert (err <= bound).all(), f"worst error / bound = {(err / bound).max():.3f}"
    assert err.max() > 0  # approximate indeed: the test would notice an exact path posing as this one
    # typical error: about 1.5% of |y| here, where one outlier makes its 64-value block coarse (step 25/127)
    assert (err / exact.abs().clamp(min=1)).median() < 0.03


def test_int8_codes_are_exact_for_integer_codes_and_rounded_otherwise():
    q, s = lut4.int8_code(torch.arange(16, dtype=torch.float32))
    assert s == 1.0 and torch.equal(q, torch.arange(16, dtype=torch.int8))
    code = bnbF.get_4bit_type("nf4", device="cpu").float()
    q, s = lut4.int8_code(code)
    assert q.abs().max() == 127 and ((q.double() * s - code.double()).abs() <= 1 / 254 + 1e-12).all()


def test_the_linear_layer_uses_the_int8_path_when_asked(monkeypatch):
    from qcore_bnb import kernels
    from qcore_bnb.format import QuantState4bit
    from qcore_bnb.linear import Linear4bit

    monkeypatch.setenv("QCORE_INT8_ACTIVATIONS", "1")
    torch.manual_seed(8)
    w = torch.randn(64, 128)
    packed, absmax = kernels.quantize_4bit(w, 64, "nf4")
    layer = Linear4bit(128, 64, False, torch.float32, device="cpu")
    layer.set_state(packed, QuantState4bit("nf4", 64, "float32", (64, 128), absmax, kernels.code_4bit("nf4")))
    assert layer.int8_activations
    calls = []
    real = ops.lut4_gemm_q8
    monkeypatch.setattr(ops, "lut4_gemm_q8", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(1, 128)
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    exact = x.double() @ kernels.dequantize_4bit_reference(packed, absmax, 64, (64, 128), kernels.code_4bit("nf4")).double().T
    assert ((y.double() - exact).abs() <= error_bound(x, layer.dequantized_weight(), absmax, 64, layer.code)).all()


@pytest.mark.parametrize(("rows", "n", "k", "blocksize"), [(1, 37, 576, 64), (1, 64, 1024, 128), (3, 21, 576, 192),
                                                           (8, 9, 320, 64), (1, 8, 64, 64)])
def test_int8_activation_gemm_is_the_int8_product_up_to_float32_rounding(variant, rows, n, k, blocksize):
    """The kernel against its own definition in float64: x through quantize_rows_q8, the code through int8.

    Catches any mix-up of the chunked layout (even/odd halves, the 64-value tail when k % 128 == 64, rows
    computed four at a time, blocks spanning several 64-value sub-blocks) that the looser bound would hide."""
    torch.manual_seed(11)
    w = torch.randn(n, k)
    from qcore_bnb import kernels

    packed, absmax = kernels.quantize_4bit(w, blocksize, "nf4")  # any multiple of 64 (bitsandbytes: powers of 2)
    code = kernels.code_4bit("nf4")
    x = torch.randn(rows, k) * 2
    x[:, 5] = -40.0
    code_i8, scale_inv = lut4.int8_code(code)
    got = torch.ops.qcore_bnb.lut4_gemm_q8(x, packed.view(-1), absmax, code_i8, scale_inv, n, k, blocksize)
    q, dx = lut4.quantize_rows_q8(x)
    xd = (q.double().view(rows, -1, 64) * dx.double().unsqueeze(-1)).view(rows, k)
    nibbles = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 15], 1).view(n, k).long()
    wd = (code_i8.double() * scale_inv)[nibbles] * absmax.double().repeat_interleave(blocksize).view(n, k)
    want = xd @ wd.T
    assert ((got.double() - want).abs() <= 2e-6 * (xd.abs() @ wd.abs().T) + 1e-30).all()
