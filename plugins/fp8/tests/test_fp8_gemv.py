"""The C kernels (torch.ops.qcore_fp8.gemv / dequantize) against the test's own dequantizer, in every SIMD
variant this CPU runs (ops.set_isa_cap lowers the choice), and the torch path without the binary."""

import pytest
import torch
from fp8_helpers import reference_dequantize, reference_quantize

from qcore_fp8 import ops

VARIANTS = ops.cpu_isas()
needs_binary = pytest.mark.skipif(ops.library() is None, reason="the plugin was installed without its compiled kernels")
# (n, k, block, rows): blocks dividing, not dividing (edge blocks), odd blocks, blocks wider than the weight,
# per tensor, k below one SIMD width, every row count 1..8
CASES = [(300, 200, (128, 128), 1), (300, 200, (32, 48), 3), (64, 1000, None, 8), (7, 13, (5, 3), 5),
         (33, 77, (128, 128), 2), (40, 256, (16, 64), 4), (9, 5, (2, 2), 6), (129, 129, (128, 128), 7)]


@pytest.fixture(params=VARIANTS or ["none"])
def variant(request):
    if request.param == "none":
        pytest.skip("the plugin was installed without its compiled kernels (no C compiler)")
    ops.set_isa_cap(request.param)
    assert ops.isa() == request.param
    yield request.param
    ops.set_isa_cap(VARIANTS[-1])


def _layer(n, k, block, seed):
    g = torch.Generator().manual_seed(seed)
    q, inv = reference_quantize(torch.randn(n, k, generator=g) * 0.05, block)
    return q, inv, reference_dequantize(q, inv, block)


def _assert_within_float32_rounding(y, x, w):
    """|y - x @ w.T| <= k * 2^-23 * (|x| @ |w|.T): float32 rounding of k products and sums in any order."""
    truth = x.double() @ w.double().T
    bound = x.shape[1] * 2.0**-23 * (x.double().abs() @ w.double().abs().T)
    err = (y.double() - truth).abs()
    assert bool((err <= bound).all()), f"max err/bound {float((err / bound.clamp_min(1e-300)).max())}"


@pytest.mark.parametrize("n,k,block,rows", CASES)
def test_gemv_equals_the_float32_product_in_every_variant(variant, n, k, block, rows):
    q, inv, w = _layer(n, k, block, seed=n + k)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    bn, bk = block or (0, 0)
    y = torch.ops.qcore_fp8.gemv(x, q, inv, bn, bk)
    assert y.shape == (rows, n) and y.dtype == torch.float32
    _assert_within_float32_rounding(y, x, w)


@pytest.mark.parametrize("n,k,block,rows", CASES)
def test_dequantize_is_bit_identical_to_the_reference_in_every_variant(variant, n, k, block, rows):
    q, inv, w = _layer(n, k, block, seed=rows)
    bn, bk = block or (0, 0)
    out32, out16 = torch.empty(n, k), torch.empty(n, k, dtype=torch.bfloat16)
    torch.ops.qcore_fp8.dequantize(q, inv, bn, bk, out32)
    torch.ops.qcore_fp8.dequantize(q, inv, bn, bk, out16)
    assert torch.equal(out32, w) and torch.equal(out16, w.to(torch.bfloat16))


def test_every_finite_e4m3_code_decodes_exactly_and_nan_codes_decode_as_480(variant):
    """All 256 codes in one row, each alone in its block (scale 2^-3 or 2^5: the 2^8 fold stays exact), so each
    output is one decoded value. The NaN codes 0x7F / 0xFF (refused when a checkpoint is read) decode as +-480,
    the value their bit pattern continues to; documented in the C source."""
    codes = torch.arange(256, dtype=torch.uint8)
    q = codes.view(torch.float8_e4m3fn).reshape(256, 1)
    inv = torch.tensor([2.0**-3 if c % 2 else 2.0**5 for c in range(256)]).reshape(256, 1)
    y = torch.ops.qcore_fp8.gemv(torch.ones(1, 1), q, inv, 1, 1)[0]
    values = codes.view(torch.float8_e4m3fn).float()
    nan = torch.isnan(values)
    assert nan.sum() == 2 and torch.equal(y[~nan], (values * inv[:, 0])[~nan])
    assert y[0x7F] == 480 * 2.0**-3 and y[0xFF] == -480 * 2.0**-3
    out = torch.empty(256, 1)
    torch.ops.qcore_fp8.dequantize(q, inv, 1, 1, out)
    assert torch.equal(out, y.unsqueeze(1))


def test_variants_agree_closely_on_a_large_layer():
    if len(VARIANTS) < 2:
        pytest.skip(f"this CPU runs only {VARIANTS or 'no'} kernel variant(s)")
    q, inv, w = _layer(512, 2048, (128, 128), seed=5)
    x = torch.randn(2, 2048, generator=torch.Generator().manual_seed(0))
    results = {}
    for name in VARIANTS:
        ops.set_isa_cap(name)
        results[name] = torch.ops.qcore_fp8.gemv(x, q, inv, 128, 128)
        _assert_within_float32_rounding(results[name], x, w)
    ops.set_isa_cap(VARIANTS[-1])
    assert not torch.equal(results[VARIANTS[0]], torch.zeros_like(results[VARIANTS[0]]))


@pytest.mark.parametrize("threads", [1, 2])
def test_the_result_does_not_depend_on_the_thread_count(threads):
    q, inv, _ = _layer(300, 200, (128, 128), seed=2)
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.qcore_fp8.gemv(x, q, inv, 128, 128)
        torch.set_num_threads(threads)
        assert torch.equal(torch.ops.qcore_fp8.gemv(x, q, inv, 128, 128), one)
    finally:
        torch.set_num_threads(before)


def test_without_the_binary_the_ops_run_in_torch(monkeypatch):
    q, inv, w = _layer(300, 200, (32, 48), seed=3)
    x = torch.randn(4, 200, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(ops, "library", lambda: None)
    assert ops.isa() == "torch"
    _assert_within_float32_rounding(ops.gemv(x, q, inv, 32, 48), x, w)
    out = torch.empty(300, 200)
    ops.dequantize(q, inv, 32, 48, out)
    assert torch.equal(out, w)


@needs_binary
def test_an_fp8_linear_decodes_through_the_kernel_in_every_variant(variant):
    from qcore_fp8.linear import Fp8Linear

    q, inv, w = _layer(96, 160, (64, 64), seed=4)
    layer = Fp8Linear(160, 96, False, (64, 64), device="cpu")
    layer.weight, layer.weight_scale_inv = q, inv
    x = torch.randn(3, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_within_float32_rounding(layer(x), x, w)


@needs_binary
def test_torch_compile_traces_the_kernel_path_through_the_ops():
    """fullgraph: the decode (gemv) and prefill (dequantize) paths reach the ops through the dispatcher and their
    fake implementations, without a graph break."""
    from qcore_fp8.linear import Fp8Linear

    q, inv, w = _layer(96, 160, (64, 64), seed=6)
    layer = Fp8Linear(160, 96, False, (64, 64), device="cpu")
    layer.weight, layer.weight_scale_inv = q, inv
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for rows in (3, 20):
            x = torch.randn(rows, 160, generator=torch.Generator().manual_seed(rows))
            _assert_within_float32_rounding(compiled(x), x, w)
