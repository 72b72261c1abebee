"""Our quantization math against bitsandbytes' own output (the oracle), bit for bit."""

import bitsandbytes.functional as bnbF
import pytest
import torch

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
