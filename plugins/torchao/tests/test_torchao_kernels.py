"""The CPU decode kernels against a plain dequantize + matmul reference and against torchao's own path.

The compiled kernels take float32 activations and accumulate in float32: their outputs agree with a
float64 product to float32 rounding. Without the binary, torch's int4/int8 kernels run in bfloat16
(a relative error of a few 1e-3); a wrong scale, zero point or group is off by O(1).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qcore
from qcore import int4
from qcore.testing import relative_error, without_native_kernels
from qcore_torchao import kernels
from qcore_torchao.linear import TorchAoLinear
from qcore_torchao.ops import OPS
from qcore_torchao.quantize import _quantize_linear_weight

BF16_ERROR = 6e-3  # inputs and outputs rounded to bfloat16
F32_ERROR = 1e-5  # float32 accumulation


def reference_int4(x, qdata, scale, zero_point, group):
    """W[n, k] = scale[n, k // g] * (qdata[n, k] - zero_point[n, k // g]), written out with repeat_interleave."""
    w = (qdata.double() - zero_point.double().repeat_interleave(group, 1)) * scale.double().repeat_interleave(group, 1)
    return (x.double() @ w.T).float()


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_int8_rowwise_kernel_matches_the_reference(rows):
    g = torch.Generator().manual_seed(1)
    qdata = torch.randint(-128, 128, (96, 160), generator=g, dtype=torch.int8)
    scale = torch.rand(96, 1, generator=g) / 100
    x = torch.randn(rows, 160, generator=g)
    kernel = int4.Int8RowWeight(qdata, scale, OPS)
    assert kernel.weight.data_ptr() == qdata.data_ptr()  # torchao's own int8 tensor, no copy
    y = kernel.matmul(x)
    assert y.dtype == torch.float32
    assert relative_error(y, (x.double() @ (qdata.double() * scale.double()).T).float()) < F32_ERROR


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("native", [True, False])
def test_int4_grouped_kernel_matches_the_reference_with_zero_points(monkeypatch, native, group, rows):

    if not native:  # what a plugin installed without a C compiler gets
        without_native_kernels(monkeypatch)
    g = torch.Generator().manual_seed(2)
    qdata = torch.randint(-8, 8, (64, 256), generator=g, dtype=torch.int8)
    scale = torch.rand(64, 256 // group, generator=g) / 10
    zero_point = torch.randint(-3, 4, (64, 256 // group), generator=g, dtype=torch.int8)
    x = torch.randn(rows, 256, generator=g)
    kernel = kernels.int4_kernel(qdata, scale, zero_point, group)
    assert type(kernel).__name__ == ("Int4LutWeight" if native else "Int4PackWeight")
    assert torch.equal(kernel.codes().to(torch.int16) - 8, qdata.to(torch.int16))
    y = kernel.matmul(x)
    error = F32_ERROR if native else BF16_ERROR
    assert relative_error(y, reference_int4(x, qdata, scale, zero_point, group)) < error


def _torchao_weight(name: str, out_features=96, in_features=128, dtype=torch.float32):
    from torchao_helpers import torchao_configs

    w = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(3)).to(dtype)
    return _quantize_linear_weight(w, torchao_configs()[name])


@pytest.mark.parametrize("preset", ["torchao-int8wo", "torchao-intx4-g32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_uses_the_kernel_for_decode_rows_only(preset, dtype, monkeypatch):
    weight = _torchao_weight(preset, dtype=dtype)
    layer = TorchAoLinear(128, 96, bias=True, device="meta", dtype=dtype)
    layer.set_weight(weight)
    layer.bias = nn.Parameter(torch.randn(96).to(dtype), requires_grad=False)
    kernel = layer._kernel()
    assert kernel is not None
    calls = []
    original = type(kernel).matmul
    monkeypatch.setattr(type(kernel), "matmul", lambda self, x: calls.append(x.shape) or original(self, x))
    with torch.no_grad():
        for shape in [(1, 1, 128), (2, 4, 128), (3, 5, 128)]:
            x = torch.randn(*shape).to(dtype)
            y = layer(x)
            expected = nn.functional.linear(x, weight, layer.bias)  # torchao's own path
            assert y.dtype == dtype and y.shape == expected.shape
            assert relative_error(y, expected) < (F32_ERROR if dtype == torch.float32 else 1e-2)
    assert calls == [(1, 1, 128), (2, 4, 128)]  # 15 rows went through torchao


@pytest.mark.parametrize("preset", ["torchao-int8dq", "torchao-fp8wo"])
def test_float32_only_kernels_leave_16_bit_models_to_torchao(preset):
    assert kernels.cpu_kernel_for(_torchao_weight(preset, dtype=torch.bfloat16)) is None


def test_int8_dynamic_activations_quantize_x_exactly_as_torchao():
    """The int8dq decode path quantizes x itself (torchao's from_hp takes ~180 us a call): its codes and
    scales must be torchao's, bit for bit, including an all-zero row (the eps clamp) and outliers."""
    from torchao.quantization import MappingType, PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 1536, generator=g) * torch.logspace(-6, 3, 8).unsqueeze(1)
    x[2] = 0
    x[3, 7] = 1e4
    x[4] = -x[4].abs()  # all negative
    ours_q, seen = [], {}
    original = int4.Int8RowWeight.matmul

    def spy(self, q):
        seen["q"] = q
        return original(self, q)

    weight = _torchao_weight("torchao-int8dq", in_features=1536)
    kernel = kernels.cpu_kernel_for(weight)
    assert type(kernel).__name__ == "Int8DynamicWeight"
    import unittest.mock

    with unittest.mock.patch.object(int4.Int8RowWeight, "matmul", spy):
        for row in x:
            kernel.matmul(row.view(1, -1))
            ours_q.append(seen["q"].clone())
    theirs = Int8Tensor.from_hp(x, PerRow(), mapping_type=MappingType.SYMMETRIC)
    assert torch.equal(torch.cat(ours_q), theirs.qdata.float())  # the scales are the next test's (end to end)


@pytest.mark.parametrize("preset,kernel,tolerance", [
    ("torchao-int8dq", "Int8DynamicWeight", 1e-6),  # the same integers and scales; float32 order differs
    ("torchao-fp8wo", "Fp8RowWeight", 1e-5),  # exact weights, float32 accumulation
])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_float32_kernels_match_torchaos_own_linear(preset, kernel, tolerance, rows):
    weight = _torchao_weight(preset, in_features=1536)
    layer = TorchAoLinear(1536, 96, bias=True, device="meta")
    layer.set_weight(weight)
    layer.bias = nn.Parameter(torch.randn(96), requires_grad=False)
    x = torch.randn(rows, 1536)
    with torch.no_grad():
        ours = layer(x)
        layer.fast_cpu = False
        theirs = layer(x)  # torchao's own path
    assert type(layer._kernel()).__name__ == kernel
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance * theirs.abs().max().item())


def test_fast_path_can_be_switched_off():
    layer = TorchAoLinear(128, 96, bias=False, device="meta")
    layer.set_weight(_torchao_weight("torchao-int8wo"))
    layer.fast_cpu = False
    x = torch.randn(1, 128)
    with torch.no_grad():
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight))


@pytest.mark.parametrize("preset", ["torchao-int8wo", "torchao-intx4-g32", "torchao-int8dq", "torchao-fp8wo"])
def test_decoding_with_the_kernels_then_saving_gives_the_same_checkpoint(preset, float_dir, tmp_path):
    from safetensors.torch import load_file

    model = qcore.load_quantized(float_dir, quantization_config=preset, progress=False)
    before = load_file(str(qcore.save_quantized(model, tmp_path / "before") / "model.safetensors"))
    prompt = torch.arange(5).reshape(1, 5)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=6, do_sample=False)
        TorchAoLinear.fast_cpu = False
        try:
            reference = model.generate(prompt, max_new_tokens=6, do_sample=False)
        finally:
            TorchAoLinear.fast_cpu = True
    assert torch.equal(generated, reference)
    after = load_file(str(qcore.save_quantized(model, tmp_path / "after") / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
