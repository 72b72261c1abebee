"""The fast CPU path against the plain-torch reference, and the resident layout's exact round trip."""

import pytest
import torch

from qcore_hqq import kernels, quantizer
from qcore_hqq.bitpack import pack
from qcore_hqq.format import HqqMeta
from qcore_hqq.linear import HqqLinear


def make_layer(out_features: int, in_features: int, nbits: int = 4, group_size: int = 64, axis: int = 1,
               bias: bool = True, seed: int = 0) -> tuple[HqqLinear, torch.Tensor, torch.Tensor, torch.Tensor, HqqMeta]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g) * 0.05
    q = quantizer.quantize(weight, nbits, group_size, axis, round_zero=nbits == 4)
    meta = HqqMeta(nbits=nbits, group_size=group_size, axis=axis, shape=(out_features, in_features), round_zero=nbits == 4)
    W_q = pack(q.W_q, meta.packing)
    layer = HqqLinear(in_features, out_features, bias, torch.float32)
    layer.set_quantized(W_q, q.scale, q.zero, meta, torch.randn(out_features, generator=g) if bias else None, torch.device("cpu"))
    return layer, W_q, q.scale, q.zero, meta


def plain_dequantize(W_q, scale, zero, meta):
    """An independent reference: unpack nibbles by hand (4-bit: high nibble = first half of the rows)."""
    codes = torch.cat([W_q >> 4, W_q & 15]).float()
    return ((codes - zero) * scale).reshape(meta.shape)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_layout_round_trips_exactly(group_size):
    layer, W_q, scale, zero, meta = make_layer(96, 256, group_size=group_size)
    assert layer.fast is not None and layer.W_q is None, "4-bit axis-1 layers keep only the kernel's layout"
    assert torch.equal(layer.hqq_packed_codes(), W_q)
    assert torch.equal(layer.dequantized_weight(), plain_dequantize(W_q, scale, zero, meta))
    assert torch.equal(kernels.dequantize(W_q, scale, zero, meta), plain_dequantize(W_q, scale, zero, meta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 40])
@pytest.mark.parametrize("kernel", ["Int4LutWeight", "Int4PackWeight"])
def test_int4_gemm_matches_reference(monkeypatch, kernel, dtype, rows):
    """The lookup kernel accumulates in float32 (the float zero folded as s*z*sum(x)): float32 outputs agree
    with a float64 product to float32 rounding. Without the binary (Int4PackWeight), torch's int4 GEMM
    computes in bfloat16: as close as a bfloat16 dense layer would be."""
    from qcore.testing import without_native_kernels

    if kernel == "Int4PackWeight":  # what a plugin installed without a C compiler gets
        without_native_kernels(monkeypatch)
    layer, W_q, scale, zero, meta = make_layer(128, 192, group_size=64)
    x = torch.randn(rows, 192, dtype=dtype)
    with torch.no_grad():
        y = layer(x)
    expected = x.double() @ plain_dequantize(W_q, scale, zero, meta).double().T + layer.bias.double()
    assert type(layer.fast).__name__ == kernel and y.dtype == dtype
    err = (y.double() - expected).norm() / expected.norm()
    exact = kernel == "Int4LutWeight" and dtype == torch.float32
    assert err < (1e-5 if exact else 1e-2), f"relative error {err:.2e}"


@pytest.mark.parametrize("nbits,axis", [(2, 1), (3, 1), (8, 0), (4, 0)])
def test_reference_path_for_other_layouts(nbits, axis):
    layer, W_q, scale, zero, meta = make_layer(64, 128, nbits=nbits, axis=axis)
    assert layer.fast is None
    x = torch.randn(5, 128)
    from qcore_hqq.bitpack import unpack

    codes = unpack(W_q, meta.packing, rows=meta.code_shape()[0]).float()
    weight = ((codes - zero) * scale).reshape(64, 128)
    torch.testing.assert_close(layer(x), x @ weight.T + layer.bias, rtol=1e-5, atol=1e-5)


def test_gradients_and_the_switch_use_the_exact_reference(monkeypatch):
    layer, W_q, scale, zero, meta = make_layer(64, 128)
    weight = plain_dequantize(W_q, scale, zero, meta)
    x = torch.randn(2, 20, 128, requires_grad=True)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, weight) + layer.bias)
    monkeypatch.setattr(HqqLinear, "use_fast_kernels", False)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, weight) + layer.bias)


def test_layers_that_do_not_fit_the_kernels_keep_hqqs_layout():
    layer = make_layer(40, 96, group_size=24)[0]  # groups of 24: not a multiple of 16 (lookup kernel) nor 32..256
    assert layer.fast is None and layer.W_q is not None
    layer = make_layer(40, 128)[0]  # out_features not a multiple of 16: the lookup kernel takes it (torch's int4 GEMM not)
    assert type(layer.fast).__name__ == "Int4LutWeight" and layer.W_q is None
    layer = make_layer(64, 96, group_size=32)[0]
    assert layer.fast is not None


def test_moving_off_the_cpu_restores_hqqs_W_q():
    layer, W_q, *_ = make_layer(64, 128)
    layer.to("meta")  # stands in for a GPU: the CPU layout is dropped, W_q is back on the new device
    assert layer.fast is None and layer.W_q.device.type == "meta" and layer.W_q.shape == W_q.shape


@pytest.mark.parametrize(("out_features", "group_size"), [(64, 64), (64, 128), (4200, 64)])  # 128 = in_features:
@pytest.mark.parametrize("rows", [1, 3, 40])  # one group per row, the int8 GEMV; 4200 rows: two chunks of the buffer
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_kernel_matches_an_independent_reference_and_round_trips(out_features, group_size, rows, dtype):
    layer, W_q, scale, zero, meta = make_layer(out_features, 128, nbits=8, group_size=group_size)
    assert type(layer.fast).__name__ == "Int8GroupWeight" and layer.W_q is None
    assert torch.equal(layer.hqq_packed_codes(), W_q)  # 8-bit packing is the codes themselves, grouped
    weight = ((W_q.double() - zero.double()) * scale.double()).reshape(out_features, 128)
    x = torch.randn(rows, 128).to(dtype)
    with torch.no_grad():
        y = layer(x)
    expected = x.double() @ weight.T + layer.bias.double()
    assert y.dtype == dtype
    err = ((y.double() - expected).norm() / expected.norm()).item()
    assert err < (1e-5 if dtype == torch.float32 else 1e-2), err


def test_the_bound_decode_call_follows_replaced_weights_and_refuses_freed_ones():
    """Decoding binds the kernel call to the layout's tensors once (weights checked at bind time): a replaced
    tensor makes a new binding; storage freed under it is a Python error, never a read of freed memory."""
    from qcore.native import KernelArgumentError

    layer, W_q, scale, zero, meta = make_layer(64, 128)
    x = torch.randn(1, 128)
    with torch.no_grad():
        before = layer(x)
        layer.fast.scales = layer.fast.scales * 2  # a new tensor: s*q doubles, the zero term s*z stays
        doubled = layer(x)
        weight = plain_dequantize(W_q, scale, zero, meta).double()
        zero_term = (scale * zero).double().view(64, -1)
        expected = x.double() @ (2 * weight.view(64, -1, 64) + zero_term.unsqueeze(-1)).view(64, 128).T
        torch.testing.assert_close(doubled.double() - layer.bias.double(), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(before, doubled)
        layer.fast.packed.untyped_storage().resize_(0)
        with pytest.raises(KernelArgumentError, match="replaced or resized"):
            layer(x)
