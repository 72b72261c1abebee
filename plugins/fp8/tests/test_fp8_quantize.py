"""On-the-fly quantization: bit-identical to transformers' Fp8Quantize where it applies (divisible shapes),
and to an independent block-by-block reference everywhere (edge blocks, all-zero blocks, per tensor)."""

import pytest
import torch
from fp8_helpers import reference_dequantize, reference_quantize, transformers_quantize

import qcore
from qcore.errors import NonFiniteWeightError
from qcore_fp8 import kernels


def random_weight(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w[0, 0] = 3.0  # an outlier: its block gets a coarser scale than the others
    return w.to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("shape", "block"), [((256, 384), (128, 128)), ((96, 128), (32, 64)), ((64, 96), None)])
def test_bit_identical_to_transformers_on_divisible_shapes(shape, block, dtype):
    w = random_weight(shape, dtype)
    w[32:64, :] = 0  # all-zero blocks too
    expected = transformers_quantize(w, block)
    q, inv = kernels.quantize_blockwise(w, block)
    assert same_bits(q, expected["weight"])
    # transformers' op returns a (1, 1) scale per tensor; its FP8Linear (and qcore) hold it as a scalar
    assert torch.equal(inv, expected["weight_scale_inv"].reshape(inv.shape)) and inv.dtype == torch.float32


@pytest.mark.parametrize(("shape", "block"), [((256, 384), (128, 128)), ((96, 128), (32, 64))])
def test_ue8m0_bit_identical_to_transformers(shape, block):
    w = random_weight(shape, torch.bfloat16)
    expected = transformers_quantize(w, block, scale_fmt="ue8m0")
    q, inv = kernels.quantize_blockwise(w, block, scale_fmt="ue8m0")
    assert same_bits(q, expected["weight"]) and same_bits(inv, expected["weight_scale_inv"])
    values = inv.float()
    assert torch.equal(values, torch.exp2(torch.log2(values).round()))  # powers of two


EDGE_CASES = [((300, 200), (128, 128)), ((384, 300), (128, 128)), ((7, 9), (4, 4)), ((5, 3), (128, 128)),
              ((130, 129), (64, 128))]


@pytest.mark.parametrize(("shape", "block"), EDGE_CASES)
def test_edge_blocks_match_the_independent_reference(shape, block):
    """The reference divides 448 / amax; transformers (and so qcore) multiplies 448 * (1 / amax): the scales may
    differ in the last bit, so codes may differ by one step where a value sits on a rounding boundary."""
    w = random_weight(shape)
    q, inv = kernels.quantize_blockwise(w, block)
    ref_q, ref_inv = reference_quantize(w, block)
    assert inv.shape == ref_inv.shape == tuple(-(-s // b) for s, b in zip(shape, block, strict=True))
    torch.testing.assert_close(inv, ref_inv, rtol=2.0**-22, atol=0)
    codes, ref_codes = q.view(torch.uint8).int(), ref_q.view(torch.uint8).int()
    assert ((codes - ref_codes).abs() <= 1).all() and (codes == ref_codes).float().mean() > 0.999
    torch.testing.assert_close(kernels.dequantize_blockwise(q, inv, block), reference_dequantize(q, inv, block), rtol=0, atol=0)


@pytest.mark.parametrize(("shape", "block"), EDGE_CASES)
def test_edge_blocks_bit_identical_to_transformers_on_the_zero_padded_weight(shape, block):
    """Zero padding changes no block's amax: transformers' op on the padded weight, cropped, is the ceil-division result."""
    w = random_weight(shape, torch.bfloat16)
    grid = tuple(-(-s // b) for s, b in zip(shape, block, strict=True))
    padded = torch.zeros(grid[0] * block[0], grid[1] * block[1], dtype=w.dtype)
    padded[: shape[0], : shape[1]] = w
    expected = transformers_quantize(padded, block)
    q, inv = kernels.quantize_blockwise(w, block)
    assert same_bits(q, expected["weight"][: shape[0], : shape[1]].contiguous())
    assert torch.equal(inv, expected["weight_scale_inv"])


def test_edge_block_scale_comes_from_its_valid_region_only():
    w = torch.full((300, 200), 2.0)
    w[256:, :] = 0.5  # the bottom edge blocks (44 rows) hold only 0.5
    w[:, 128:] = 0.25  # the right edge blocks (72 columns) hold only 0.25 (and 0.5 below row 256)
    w[256:, 128:] = 0.125
    _, inv = kernels.quantize_blockwise(w, (128, 128))
    expected = torch.tensor([[2.0, 0.25], [2.0, 0.25], [0.5, 0.125]]) / 448
    torch.testing.assert_close(inv, expected, rtol=1e-7, atol=0)


def test_all_zero_blocks_get_scale_one_and_dequantize_to_exact_zeros():
    w = random_weight((256, 256))
    w[:128, 128:] = 0
    w[200:, :] = 0.0
    q, inv = kernels.quantize_blockwise(w, (128, 128))
    assert inv[0, 1] == 1.0 and inv[1, 0] != 1.0
    assert (q[:128, 128:].view(torch.uint8) == 0).all()  # +0, never -0 or NaN
    deq = kernels.dequantize_blockwise(q, inv, (128, 128))
    assert torch.equal(deq[:128, 128:], torch.zeros(128, 128)) and torch.equal(deq[200:], torch.zeros(56, 256))
    q_all, inv_all = kernels.quantize_blockwise(torch.zeros(3, 5), None)
    assert inv_all == 1.0 and torch.equal(kernels.dequantize_blockwise(q_all, inv_all, None), torch.zeros(3, 5))


@pytest.mark.parametrize("block", [(128, 128), (16, 32), None])
def test_error_is_within_fp8_rounding(block):
    """|W - deq| <= 2^-4 |W| (3 mantissa bits, round to nearest) + half the subnormal step of the block."""
    w = random_weight((200, 300))
    q, inv = kernels.quantize_blockwise(w, block)
    deq = kernels.dequantize_blockwise(q, inv, block)
    step = reference_dequantize(torch.ones(200, 300, dtype=torch.float8_e4m3fn), inv, block) * 2.0**-10
    assert ((w - deq).abs() <= w.abs() * 2.0**-4 + step).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_name_the_tensor(bad):
    w = random_weight((300, 200))
    w[257, 3] = bad
    with pytest.raises(NonFiniteWeightError, match=r"layers\.3\.q_proj\.weight .*\[257, 3\]"):
        kernels.quantize_blockwise(w, (128, 128), name="layers.3.q_proj.weight")


def test_non_finite_weight_in_a_checkpoint_is_refused_while_loading(tmp_path):
    from qcore.testdata import tiny_llama

    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5, 7] = float("nan")
    model.save_pretrained(tmp_path)
    with pytest.raises(NonFiniteWeightError, match=r"layers\.1\.mlp\.up_proj\.weight"):
        qcore.load_quantized(tmp_path, "fp8-block128", progress=False)


def test_loading_keeps_one_byte_per_weight(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama().save_pretrained(tmp_path)
    model = qcore.load_quantized(tmp_path, "fp8-block128", progress=False)
    for name in model.qcore_modules:
        module = model.get_submodule(name)
        assert module.weight.dtype == torch.float8_e4m3fn and module.weight.element_size() == 1
        assert module.weight_scale_inv.shape == (-(-module.out_features // 128), -(-module.in_features // 128))
