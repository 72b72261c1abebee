"""The CPU int4 kernel against the plain-torch reference, and the exact round trip of its packed codes."""

import pytest
import torch

from qcore import int4
from qcore_awq import kernels
from qcore_awq.format import AWQTensors
from qcore_awq.linear import AWQLinear
from qcore_awq.ops import OPS
from qcore_awq.quantizer import pseudo_quantize, quantize_weight


def random_layer(in_features, out_features, group_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = in_features // group_size
    return AWQTensors(torch.randint(0, 16, (in_features, out_features), generator=g, dtype=torch.uint8),
                      torch.randint(0, 16, (groups, out_features), generator=g, dtype=torch.uint8),
                      (torch.rand(groups, out_features, generator=g) * 0.02 + 0.001).to(torch.float16))


def reference_weight(layer):
    """W[o, i] = s[g, o] * (q[i, o] - z[g, o]), g = i // group_size, computed element by element in float64."""
    in_features, out_features = layer.codes.shape
    group_size = in_features // layer.scales.shape[0]
    w = torch.empty(out_features, in_features, dtype=torch.float64)
    for i in range(in_features):
        g = i // group_size
        w[:, i] = layer.scales[g].double() * (layer.codes[i].double() - layer.zeros[g].double())
    return w


SHAPES = [(64, 32, 32), (192, 64, 64), (256, 96, 128), (128, 64, 128)]
KERNELS = ["lut4", "int4pack"]  # this package's compiled lookup GEMV; torch's int4 GEMM (no binary)


def fast_layout(kernel, layer):
    group_size = layer.codes.shape[0] // layer.scales.shape[0]
    args = (layer.codes.T, layer.scales.float().T, layer.zeros.float().T, group_size)
    return int4.Int4LutWeight(*args, OPS) if kernel == "lut4" else int4.Int4PackWeight(*args)


@pytest.mark.parametrize(("in_features", "out_features", "group_size"), SHAPES)
def test_reference_dequantize(in_features, out_features, group_size):
    layer = random_layer(in_features, out_features, group_size)
    w = kernels.dequantize(layer.codes, layer.zeros, layer.scales)
    torch.testing.assert_close(w.double(), reference_weight(layer), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("in_features", "out_features", "group_size"), SHAPES)
def test_int4_kernel_codes_round_trip_exactly(kernel, in_features, out_features, group_size):
    layer = random_layer(in_features, out_features, group_size, seed=1)
    fast = fast_layout(kernel, layer)
    assert torch.equal(fast.codes().T, layer.codes)


@pytest.mark.parametrize(("in_features", "out_features", "group_size"), SHAPES)
@pytest.mark.parametrize("rows", [1, 5, 300])  # 300 > in_features for some shapes: dequantize-then-GEMM branch
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", KERNELS)
def test_int4_kernel_matches_reference(kernel, in_features, out_features, group_size, rows, dtype):
    layer = random_layer(in_features, out_features, group_size, seed=2)
    fast = fast_layout(kernel, layer)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(3))
    expected = (x.double() @ reference_weight(layer).T)
    y = fast.matmul(x.to(dtype))
    assert y.dtype == dtype and y.shape == (rows, out_features)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    err = ((y.double() - expected).norm() / expected.norm()).item()
    assert err < tol, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_module_forward_in_each_dtype_with_bias(dtype):
    layer = random_layer(128, 64, 64, seed=4)
    bias = torch.randn(64)
    module = AWQLinear(128, 64, True, 64, device="cpu")
    module.set_layer(layer, bias.to(torch.float16), dtype)
    module.prepare_fast_path()
    assert type(module.fast).__name__ == "Int4LutWeight" and module.qweight is None  # one resident layout
    x = torch.randn(1, 7, 128).to(dtype)  # decode-sized: the kernel itself
    y = module(x)
    assert y.dtype == dtype and y.shape == (1, 7, 64)
    expected = x.double() @ reference_weight(layer).T + bias.to(torch.float16).double()
    assert ((y.double() - expected).norm() / expected.norm()).item() < (1e-4 if dtype == torch.float32 else 2e-2)
    assert module.tensors("gemm")["bias"].dtype == torch.float16  # saved back as the checkpoint had it


def test_quantize_weight_agrees_with_pseudo_quantize():
    """The stored codes dequantize to AutoAWQ's pseudo-quantized weight (up to the float16 rounding of the scale)."""
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(5))
    layer = quantize_weight(w, 64)
    stored = kernels.dequantize(layer.codes, layer.zeros, layer.scales)
    diff = (stored - pseudo_quantize(w, 64)).abs()
    step = layer.scales.float().repeat_interleave(64, dim=0).T  # one code step per element
    assert (diff <= step * 1.01).all()  # a value on a rounding boundary may land one step away
    assert (diff > step * 0.01).float().mean() < 0.01
    assert (layer.codes.max() == 15) and (layer.codes.min() == 0)


def test_module_without_fast_path_keeps_the_gemm_qweight():
    layer = random_layer(96, 64, 24, seed=6)  # groups of 24: not a multiple of 16 (lut4) nor 32..256 (torch int4)
    module = AWQLinear(96, 64, False, 24, device="cpu")
    module.set_layer(layer, None, torch.float32)
    module.prepare_fast_path()
    assert module.fast is None and module.qweight is not None
    x = torch.randn(2, 96)
    expected = x.double() @ reference_weight(layer).T
    torch.testing.assert_close(module(x).double(), expected, rtol=1e-5, atol=1e-6)


def test_whole_row_groups_of_96_run_on_the_lookup_kernel():
    layer = random_layer(96, 64, 96, seed=6)  # a multiple of 16: the lookup kernel takes it (torch's int4 GEMM does not)
    module = AWQLinear(96, 64, False, 96, device="cpu")
    module.set_layer(layer, None, torch.float32)
    module.prepare_fast_path()
    assert type(module.fast).__name__ == "Int4LutWeight" and module.qweight is None
    x = torch.randn(2, 96)
    expected = x.double() @ reference_weight(layer).T
    torch.testing.assert_close(module(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_saving_after_the_fast_path_gives_the_checkpoint_tensors_and_moving_off_cpu_restores_qweight():
    layer = random_layer(128, 64, 64, seed=7)
    module = AWQLinear(128, 64, False, 64, device="cpu")
    module.set_layer(layer, None, torch.float32)
    before = {k: v.clone() for k, v in module.tensors("gemm").items()}
    module.prepare_fast_path()
    assert module.qweight is None
    for key, tensor in module.tensors("gemm").items():
        assert torch.equal(tensor, before[key]), key
    module.to("meta")  # stands in for a GPU: the CPU layout is dropped, qweight is back on the new device
    assert module.fast is None and module.qweight.device.type == "meta" and module.qweight.shape == before["qweight"].shape
