"""The fast CPU kernels against the reference dequantize + matmul."""

import pytest
import torch

from qcore_gptq.format import to_tensors
from qcore_gptq.gptq import gptq_quantize, rtn_quantize
from qcore_gptq.linear import GPTQQuantLinear


def layer_from(result, in_features, out_features, bits, group_size):
    packed = to_tensors(result, bits, "gptq_v2")
    layer = GPTQQuantLinear(in_features, out_features, bias=False, bits=bits, group_size=group_size, device="cpu")
    layer.set_tensors(packed["qweight"], result.zeros, packed["scales"], result.g_idx, None)
    return layer


LAYOUTS = [(256, 128, False), (576, 128, False), (576, 128, True), (192, 64, True), (256, 32, False), (576, -1, False)]


# torch's int4 GEMM takes groups of 32..256 only (a -1 group keeps the reference there)
@pytest.mark.parametrize(("kernel", "in_features", "group_size", "desc_act"),
                         [("Int4LutWeight", *lay) for lay in LAYOUTS] + [("Int4CpuWeight", *lay) for lay in LAYOUTS[:-1]])
def test_int4_cpu_kernels_match_the_reference(monkeypatch, kernel, in_features, group_size, desc_act):
    from qcore.testing import without_native_kernels

    if kernel == "Int4CpuWeight":  # what a plugin installed without a C compiler gets
        without_native_kernels(monkeypatch)
    torch.manual_seed(0)
    W = torch.randn(48, in_features)
    X = torch.randn(256, in_features)
    result = gptq_quantize(W, X.T @ X, bits=4, group_size=group_size, desc_act=desc_act, sym=False)
    layer = layer_from(result, in_features, 48, 4, group_size)
    for rows in (1, 3, 15, 40):  # decode-sized and prefill-sized inputs
        x = torch.randn(rows, 1, in_features) * 3
        layer.fast = None
        reference = x.double() @ layer.dequantized_weight(torch.float64).T
        layer.prepare_fast_path()
        assert type(layer.fast).__name__ == kernel
        fast = layer(x)
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast.double(), reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_int8_cpu_kernel_matches_the_reference():
    torch.manual_seed(1)
    W = torch.randn(40, 96)
    layer = layer_from(rtn_quantize(W, 8, -1, sym=True), 96, 40, 8, -1)
    layer.prepare_fast_path()
    assert type(layer.fast).__name__ == "Int8CpuWeight"
    for rows in (4, 30):  # decode-sized (int8 GEMM) and prefill-sized (scaled weight + F.linear)
        x = torch.randn(rows, 96)
        reference = x.double() @ layer.dequantized_weight(torch.float64).T
        torch.testing.assert_close(layer(x).double(), reference, rtol=1e-4, atol=1e-3)


def test_layouts_the_fast_path_cannot_take_keep_the_reference():
    torch.manual_seed(2)
    W = torch.randn(32, 96)
    layer = layer_from(rtn_quantize(W, 3, 32, sym=True), 96, 32, 3, 32)
    layer.prepare_fast_path()
    assert layer.fast is None
    assert torch.allclose(layer(torch.eye(96)).T, layer.dequantized_weight())


def test_int4_lut_kernel_takes_bfloat16_inputs():
    torch.manual_seed(3)
    W, X = torch.randn(64, 576), torch.randn(256, 576)
    layer = layer_from(gptq_quantize(W, X.T @ X, bits=4, group_size=128, desc_act=True, sym=False), 576, 64, 4, 128)
    layer.prepare_fast_path()
    assert type(layer.fast).__name__ == "Int4LutWeight"
    for rows in (1, 40):
        x = torch.randn(rows, 576).bfloat16()
        reference = x.double() @ layer.dequantized_weight(torch.float64).T
        y = layer(x)
        assert y.dtype == torch.bfloat16
        # one bf16 rounding of the output, as a bf16 F.linear would have
        torch.testing.assert_close(y.double(), reference, rtol=0, atol=2 ** -8 * reference.abs().max().item())
