"""Our quantization math against bitsandbytes' own output (the oracle), bit for bit."""

import bitsandbytes.functional as bnbF
import pytest
import torch

from qcore import lut4
from qcore.testing import without_native_kernels
from qcore_bnb import kernels


@pytest.fixture(scope="module")
def real_weight():
    from safetensors import safe_open

    from qcore.testdata import smollm2_checkpoint

    with safe_open(str(smollm2_checkpoint() / "model.safetensors"), "pt") as f:
        return f.get_tensor("model.layers.3.mlp.down_proj.weight")  # (576, 1536)


def test_codes_and_dynamic_map_match():
    for quant_type in ("nf4", "fp4"):
        assert torch.equal(kernels.code_4bit(quant_type), bnbF.get_4bit_type(quant_type, device="cpu"))
    assert torch.equal(kernels.dynamic_map_signed(), bnbF.create_dynamic_map(signed=True))


WEIGHTS = {
    "square": lambda: torch.randn(64, 64) * 0.05,
    "partial-block": lambda: torch.randn(3, 100),
    "odd-count": lambda: torch.randn(7, 9),
    "with-zero-block": lambda: torch.cat([torch.zeros(1, 64), torch.randn(3, 64)]),
    # bf16 rows of whole blocks: bitsandbytes' native bf16 dequantize mis-scales rows that end
    # inside a block (e.g. 96 columns), so only aligned shapes can be compared with it.
    "bf16": lambda: torch.randn(32, 128).to(torch.bfloat16),
}


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_4bit_is_bit_identical(quant_type, name):
    torch.manual_seed(0)
    w = WEIGHTS[name]()
    ref_packed, ref_state = bnbF.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    packed, absmax = kernels.quantize_4bit(w, 64, quant_type)
    assert torch.equal(packed, ref_packed) and torch.equal(absmax, ref_state.absmax)
    ours = kernels.dequantize_4bit(packed, absmax, 64, tuple(w.shape), kernels.code_4bit(quant_type), w.dtype)
    assert torch.equal(ours, bnbF.dequantize_4bit(ref_packed, ref_state))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_real_weight_with_double_quant_is_bit_identical(real_weight, quant_type):
    ref_packed, ref = bnbF.quantize_4bit(real_weight, blocksize=64, quant_type=quant_type, compress_statistics=True)
    packed, absmax = kernels.quantize_4bit(real_weight, 64, quant_type)
    offset = absmax.mean()
    nested, nested_absmax = kernels.quantize_blockwise_8bit(absmax - offset, 256)
    assert torch.equal(packed, ref_packed)
    assert torch.equal(nested, ref.absmax) and torch.equal(nested_absmax, ref.state2.absmax)
    assert offset.item() == ref.offset.item()
    decoded = kernels.dequantize_blockwise_8bit(nested, nested_absmax, kernels.dynamic_map_signed(), 256) + offset
    ours = kernels.dequantize_4bit(packed, decoded, 64, tuple(real_weight.shape), kernels.code_4bit(quant_type))
    assert torch.equal(ours, bnbF.dequantize_4bit(ref_packed, ref))


def test_blockwise_8bit_matches_on_many_scales():
    torch.manual_seed(1)
    for scale in (1e-4, 0.01, 1.0, 30.0):
        x = torch.randn(5000) * scale
        ref, ref_state = bnbF.quantize_blockwise(x, blocksize=256)
        ours, absmax = kernels.quantize_blockwise_8bit(x, 256)
        assert torch.equal(ours, ref) and torch.equal(absmax, ref_state.absmax)


def test_fast_dequantize_equals_the_reference(real_weight):
    for w in (real_weight, torch.randn(3, 100)):
        packed, absmax = kernels.quantize_4bit(w, 64, "nf4")
        code = kernels.code_4bit("nf4")
        for dtype in (torch.float32, torch.bfloat16):
            ref = kernels.dequantize_4bit_reference(packed, absmax, 64, tuple(w.shape), code, dtype)
            assert torch.equal(kernels.dequantize_4bit(packed, absmax, 64, tuple(w.shape), code, dtype), ref)


def test_int8_weights_and_matmul_with_outliers_match():
    import bitsandbytes as bnb

    torch.manual_seed(2)
    w, b = torch.randn(48, 96), torch.randn(48)
    q, scb = kernels.int8_rowwise_quantize(w)
    ref_q, ref_scb, _ = bnbF.int8_vectorwise_quant(w.to(torch.float16))
    assert torch.equal(q, ref_q) and torch.equal(scb, ref_scb)
    x = torch.randn(5, 96) * 2
    x[:, 7] = 9.0  # an outlier column
    for threshold in (0.0, 6.0):
        state = bnb.MatmulLtState()
        state.CB, state.SCB, state.has_fp16_weights, state.is_training = ref_q, ref_scb, False, False
        with torch.no_grad():
            expected = bnb.matmul(x, ref_q, state=state, threshold=threshold, bias=b)
        assert torch.equal(kernels.int8_mixed_matmul(x, q, scb, threshold, b), expected)


def test_int8_matmul_is_exact_for_wide_layers():
    a = torch.full((2, 4096), 127, dtype=torch.int8)
    b = torch.full((3, 4096), -127, dtype=torch.int8)
    assert torch.equal(kernels.int8_matmul_exact(a, b), torch.full((2, 3), -127.0 * 127 * 4096))


# ---- the compiled lookup kernels (torch.ops.qcore_bnb, qcore/lut4.h built into qcore_bnb/_kernels) on bitsandbytes'
# format, in every SIMD variant this CPU runs (the binary's ISA cap lowered), and their torch fallback ----

def _variants():
    from qcore_bnb import ops

    lib = ops.library()
    assert lib is not None, "qcore_bnb/_kernels*.so is missing: reinstall the plugin with a C compiler (pip install -e plugins/bnb)"
    return [*lut4.ISA_NAMES[: lib.qcbnb_cpu_isa() + 1], "torch"]


@pytest.fixture(params=_variants())
def variant(request, monkeypatch):
    """Runs the test with the binary capped at one ISA ("portable", "avx2", "avx512"), or without it ("torch")."""
    from qcore_bnb import ops

    lib = ops.library()
    if request.param == "torch":
        without_native_kernels(monkeypatch)
        assert ops.library() is None and ops.isa() == "torch"
    else:
        lib.qcbnb_set_isa_cap(lut4.ISA_NAMES.index(request.param))
        assert ops.isa() == request.param
    yield request.param
    lib.qcbnb_set_isa_cap(3)


def _dequantize(packed, absmax, blocksize, shape, code, dtype=torch.float32):
    out = torch.empty(shape, dtype=dtype)
    torch.ops.qcore_bnb.lut4_dequantize(packed.view(-1), absmax, code, *shape, blocksize, out)
    return out


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_native_dequantize_is_bit_identical_to_bitsandbytes(variant, real_weight, quant_type):
    torch.manual_seed(3)
    for w, blocksize in ((real_weight.float(), 64), (torch.randn(48, 256), 128), (torch.randn(4, 4096), 4096),
                         (torch.randn(3, 64) * 1e-3, 32)):
        ref_packed, ref_state = bnbF.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
        expected = bnbF.dequantize_4bit(ref_packed, ref_state)
        shape = tuple(w.shape)
        assert lut4.supported(blocksize, *shape)
        assert torch.equal(_dequantize(ref_packed, ref_state.absmax, blocksize, shape, ref_state.code), expected)
        bf16 = _dequantize(ref_packed, ref_state.absmax, blocksize, shape, ref_state.code, torch.bfloat16)
        assert torch.equal(bf16, expected.to(torch.bfloat16))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 64])
def test_native_matmul_matches_float64_and_bitsandbytes(variant, real_weight, quant_type, rows):
    torch.manual_seed(4)
    w = real_weight.float()
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    x = torch.randn(rows, w.shape[1])
    x[:, 5] = 40.0  # a large activation column must not hurt the float32 accumulation
    got = torch.ops.qcore_bnb.lut4_gemm(x, packed.view(-1), state.absmax, state.code, *w.shape, 64)
    exact = x.double() @ bnbF.dequantize_4bit(packed, state).double().T
    assert got.dtype == torch.float32 and got.shape == (rows, w.shape[0])
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-4 * exact.abs().max().item())
    if rows == 1:  # bitsandbytes' own CPU path, float32 (last: it rewrites state.absmax in place)
        import bitsandbytes as bnb

        ref = bnb.matmul_4bit(x, packed.t(), quant_state=state)
        torch.testing.assert_close(got, ref.reshape(got.shape), rtol=1e-4, atol=1e-4 * exact.abs().max().item())


@pytest.mark.parametrize("blocksize", [16, 32, 48, 64, 128])  # whole split steps per block (32, 64, 128) or not
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("code_kind", ["affine", "nf4"])
def test_native_gemv_paths_match_float64(variant, blocksize, rows, code_kind):
    """The shared lookup GEMV on every ISA: decoding (one row) takes the split path where a block holds whole
    split steps (x permuted once, nibbles converted directly when the code is 0..15); the affine form
    (``lut4_gemm_affine``) subtracts s*z times each block's sum of x."""
    torch.manual_seed(blocksize + rows)
    n, k = 40, 384
    packed = torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8)
    absmax, szeros = torch.rand(n * k // blocksize) + 0.1, torch.randn(n * k // blocksize)
    code = torch.arange(16, dtype=torch.float32) if code_kind == "affine" else kernels.code_4bit("nf4")
    x = torch.randn(rows, k)
    nibbles = torch.stack([packed >> 4, packed & 15], dim=1).view(-1).long()
    w = (code.double()[nibbles].view(-1, blocksize) * absmax.double().unsqueeze(1)).view(n, k)
    exact = x.double() @ w.T
    got = torch.ops.qcore_bnb.lut4_gemm(x, packed, absmax, code, n, k, blocksize)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    zero_term = x.double().view(rows, -1, blocksize).sum(-1) @ szeros.double().view(n, -1).T
    got = torch.ops.qcore_bnb.lut4_gemm_affine(x, packed, absmax, code, szeros, n, k, blocksize)
    torch.testing.assert_close(got.double(), exact - zero_term, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("k", [576, 100])  # whole SIMD steps; a tail past them
def test_native_f32_gemm_matches_float64(variant, rows, k):
    """The float32 GEMV for layers left unquantized (the output head), on every ISA and its torch fallback."""
    torch.manual_seed(rows + k)
    w, x = torch.randn(70, k), torch.randn(rows, k)
    x[:, 3] = 40.0
    exact = x.double() @ w.double().T
    got = torch.ops.qcore_bnb.f32_gemm(x, w)
    assert got.dtype == torch.float32 and got.shape == (rows, 70)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6 * exact.abs().max().item())


@pytest.mark.parametrize("fallback", [False, True], ids=["native", "torch"])
def test_float_layers_left_unquantized_decode_on_the_float32_gemv(monkeypatch, fallback):
    from torch import nn

    from qcore.int4 import FloatDecodeLinear, decode_float_linears
    from qcore_bnb import ops

    if fallback:
        without_native_kernels(monkeypatch)
    torch.manual_seed(6)
    emb, head, side = nn.Embedding(50, 64), nn.Linear(64, 50, bias=False), nn.Linear(64, 30)
    head.weight = emb.weight  # tied, as an output head usually is
    model = nn.ModuleDict({"emb": emb, "head": head, "side": side, "in_half": nn.Linear(64, 8).half()})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = decode_float_linears(model, ops.OPS)
    if fallback:  # without the binary nothing changes
        assert converted == 0 and type(head) is nn.Linear
        return
    assert converted == 3 and type(head) is FloatDecodeLinear and type(side) is FloatDecodeLinear
    assert head.weight is emb.weight  # tying and the state dict are untouched
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    calls = []
    real = ops.OPS.impl["f32_gemm"]
    monkeypatch.setitem(ops.OPS.impl, "f32_gemm", lambda *a: calls.append(1) or real(*a))
    for layer in (head, side):
        for shape in ((1, 64), (2, 1, 64), (3, 40, 64)):
            x = torch.randn(*shape)
            with torch.no_grad():
                y = layer(x)
            exact = x.double() @ layer.weight.double().T + (0 if layer.bias is None else layer.bias.double())
            assert y.shape == (*shape[:-1], layer.out_features)
            torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5)
    assert len(calls) == 4  # one and two rows per layer; 120 rows are nn.Linear's
    x = torch.randn(1, 64, requires_grad=True)
    side(x).sum().backward()  # gradients: nn.Linear's forward, so they reach x and the weight
    assert len(calls) == 4 and x.grad is not None and side.weight.grad is not None
    torch.testing.assert_close(x.grad[0], side.weight.detach().sum(0))


def test_the_binary_was_built_at_install_and_dispatches_at_run_time():
    from qcore import native
    from qcore_bnb import ops

    path = native.library_path("qcore_bnb", "_kernels")
    assert path is not None and path.parent.name == "qcore_bnb"
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    expected = 2 if (" avx512f " in flags and " avx512bw " in flags) else 1 if (" avx2 " in flags and " fma " in flags) else 0
    assert ops.library().qcbnb_cpu_isa() == expected


@pytest.mark.parametrize("fallback", [False, True], ids=["native", "torch"])
def test_linear_uses_the_kernels_and_agrees_with_the_reference(monkeypatch, fallback):
    from qcore_bnb import ops
    from qcore_bnb.format import QuantState4bit
    from qcore_bnb.linear import Linear4bit

    if fallback:
        without_native_kernels(monkeypatch)
    torch.manual_seed(5)
    w, b = torch.randn(96, 128), torch.randn(96)
    packed, absmax = kernels.quantize_4bit(w, 64, "nf4")
    layer = Linear4bit(128, 96, True, torch.float32, device="cpu")
    layer.bias.data = b
    layer.set_state(packed, QuantState4bit(absmax=absmax, shape=(96, 128), blocksize=64, quant_type="nf4",
                                           quant_map=kernels.code_4bit("nf4"), dtype="float32"))
    assert layer.native is not fallback
    calls = []
    real = ops.lut4_gemm
    monkeypatch.setattr(ops, "lut4_gemm", lambda *a, **k: calls.append(1) or real(*a, **k))
    for shape in ((1, 128), (2, 1, 128), (3, 40, 128)):
        x = torch.randn(*shape)
        with torch.no_grad():
            fast = layer(x)
        slow = x @ kernels.dequantize_4bit_reference(packed, absmax, 64, (96, 128), kernels.code_4bit("nf4")).T + b
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2  # the two decode-sized inputs; 120 rows go through dequantize + matmul


def test_prefill_reuses_one_buffer_and_stays_correct_across_layers():
    from qcore_bnb.format import QuantState4bit
    from qcore_bnb.linear import Linear4bit

    torch.manual_seed(6)
    code = kernels.code_4bit("nf4")
    layers = []
    for n, k in ((64, 256), (128, 64), (64, 256)):
        packed, absmax = kernels.quantize_4bit(torch.randn(n, k), 64, "nf4")
        layer = Linear4bit(k, n, False, torch.float32, device="cpu")
        layer.set_state(packed, QuantState4bit(absmax=absmax, shape=(n, k), blocksize=64, quant_type="nf4",
                                               quant_map=code, dtype="float32"))
        layers.append((layer, packed, absmax, (n, k)))
    ptr = layers[0][0]._lut4_dequantize(torch.float32, reuse=True).data_ptr()
    for layer, packed, absmax, shape in layers[1:] + layers[:1]:
        w = layer._lut4_dequantize(torch.float32, reuse=True)
        assert w.data_ptr() == ptr  # the same memory every time: no fresh pages per layer
        assert torch.equal(w, kernels.dequantize_4bit_reference(packed, absmax, 64, shape, code))
    assert layers[0][0].dequantized_weight().data_ptr() != ptr  # what callers keep: a new tensor
