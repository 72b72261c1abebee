"""Fp8Linear's forward paths against the reference (dequantize with the test's own dequantizer + F.linear),
the training path, dequantize and in-memory quantization."""

import pytest
import torch
from fp8_helpers import reference_dequantize, reference_quantize

import qcore
from qcore_fp8 import kernels
from qcore_fp8.linear import Fp8Linear


def make_layer(out_features=300, in_features=200, block=(128, 128), bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, inv = reference_quantize(torch.randn(out_features, in_features, generator=g) * 0.05, block)
    layer = Fp8Linear(in_features, out_features, bias, block, compute_dtype=dtype, device="cpu")
    layer.weight, layer.weight_scale_inv = q, inv
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(out_features, generator=g).to(dtype), requires_grad=False)
    return layer


def reference_forward(layer, x):
    weight = reference_dequantize(layer.weight, layer.weight_scale_inv, layer.block_size).to(x.dtype)
    return torch.nn.functional.linear(x, weight, None if layer.bias is None else layer.bias.to(x.dtype))


UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [(128, 128), (32, 48), None])
def test_prefill_matches_the_reference_exactly(dtype, block):
    """More than 8 rows: the dequantized weight (C kernel or torch) is bit-identical, then the same F.linear."""
    layer = make_layer(block=block, dtype=dtype)
    x = torch.randn(2, 17, 200, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype and y.shape == (2, 17, 300)
    assert torch.equal(y, reference_forward(layer, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (2, 4), (1, 8)])
@pytest.mark.parametrize("block", [(128, 128), (32, 48), None])
def test_decode_matches_the_float32_product_up_to_rounding(dtype, shape, block):
    """Up to 8 rows go through the FP8 GEMV (with the binary): the float32 product x @ W.T with the exactly
    dequantized weight, up to float32 summation order, plus bias, rounded once to the compute dtype. The
    truth is float64 from the test's own dequantizer; the bound is k float32 roundings of sum |x||W| plus
    one rounding of the output."""
    layer = make_layer(block=block, dtype=dtype)
    x = torch.randn(*shape, 200, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype and y.shape == (*shape, 300)
    w = reference_dequantize(layer.weight, layer.weight_scale_inv, layer.block_size).double()
    x64 = x.double().reshape(-1, 200)
    truth = x64 @ w.T + layer.bias.double()
    bound = 200 * 2.0**-23 * (x64.abs() @ w.abs().T + layer.bias.double().abs()) + 2 * UNIT_ROUNDOFF[dtype] * truth.abs()
    err = (y.double().reshape(-1, 300) - truth).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    if dtype != torch.float32:  # with float32 weights the result is at least as close as the dtype's own product
        reference_err = (reference_forward(layer, x).double().reshape(-1, 300) - truth).abs()
        assert float(err.mean()) <= 1.01 * float(reference_err.mean())


def test_decode_runs_the_fp8_gemv_and_prefill_the_c_dequantize(monkeypatch):
    from qcore_fp8 import ops

    if ops.library() is None:
        pytest.skip("the plugin was installed without its compiled kernels (no C compiler)")
    calls = []
    monkeypatch.setattr(ops, "gemv", lambda *a: calls.append("gemv") or torch.ops.qcore_fp8.gemv(*a))
    monkeypatch.setattr(ops, "dequantize", lambda *a: calls.append("dequantize") or torch.ops.qcore_fp8.dequantize(*a))
    layer = make_layer()
    with torch.no_grad():
        layer(torch.randn(1, 8, 200))
        layer(torch.randn(1, 9, 200))
    assert calls == ["gemv", "dequantize"]


def test_scratch_buffer_is_reused_without_aliasing_outputs():
    small, big = make_layer(64, 40, seed=1), make_layer(300, 200, seed=2)
    x_small, x_big = torch.randn(13, 40), torch.randn(13, 200)
    with torch.no_grad():
        first = small(x_small)
        big(x_big)
        again = small(x_small)
        buffer = kernels.SCRATCH.buffers[(torch.device("cpu"), torch.float32)]
        assert buffer.numel() >= 300 * 200
        big(x_big)
        assert kernels.SCRATCH.buffers[(torch.device("cpu"), torch.float32)] is buffer  # not reallocated
    assert torch.equal(first, again) and torch.equal(first, reference_forward(small, x_small))


def test_gradients_flow_to_the_input_and_the_weight_stays_frozen():
    layer = make_layer(dtype=torch.float32)
    x = torch.randn(4, 200, requires_grad=True)
    layer(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    reference_forward(layer, x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    assert not any(p.requires_grad for p in layer.parameters())


class WithAdapter(torch.nn.Module):
    """base(x) + adapter(x), the adapter starting at zero (as LoRA's B)."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.adapter = torch.nn.Linear(base.in_features, base.out_features, bias=False)
        torch.nn.init.zeros_(self.adapter.weight)

    def forward(self, x):
        return self.base(x) + self.adapter(x)


def test_an_adapter_trains_on_top_of_an_fp8_model(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama().save_pretrained(tmp_path)
    model = qcore.load_quantized(tmp_path, "fp8-block128", progress=False)
    assert qcore.is_trainable(model)
    attention = model.model.layers[0].self_attn
    attention.q_proj = WithAdapter(attention.q_proj)
    model.train()
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    model(tokens, labels=tokens).loss.backward()
    adapter = attention.q_proj.adapter
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0


def test_dequantize_gives_float_linears_with_the_reference_weights(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama(attention_bias=True).save_pretrained(tmp_path)
    model = qcore.load_quantized(tmp_path, "fp8-block128", torch_dtype=torch.bfloat16, progress=False)
    layer = model.model.layers[0].self_attn.k_proj
    expected = reference_dequantize(layer.weight, layer.weight_scale_inv, layer.block_size).to(torch.bfloat16)
    bias = layer.bias.data.clone()
    qcore.dequantize(model)
    restored = model.model.layers[0].self_attn.k_proj
    assert type(restored) is torch.nn.Linear and restored.weight.dtype == torch.bfloat16
    assert torch.equal(restored.weight, expected) and torch.equal(restored.bias, bias)


def test_in_memory_quantize_equals_quantizing_while_loading(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama().save_pretrained(tmp_path)
    loaded = qcore.load_quantized(tmp_path, "fp8-block128", progress=False)
    in_memory = qcore.quantize(tiny_llama(), "fp8-block128", progress=False)
    tokens = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(in_memory(tokens).logits, loaded(tokens).logits)



def test_cpu_decoding_of_every_e4m3_code_follows_the_format():
    """e4m3fn: S.EEEE.MMM, bias 7; E=0 is subnormal (M/8 * 2^-6); S.1111.111 is NaN (refused at load)."""
    codes = [c for c in range(256) if c & 0x7F != 0x7F]
    expected = []
    for c in codes:
        sign, exp, man = -1.0 if c & 0x80 else 1.0, (c >> 3) & 15, c & 7
        expected.append(sign * (man / 8 * 2.0**-6 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)))
    q = torch.tensor(codes, dtype=torch.uint8).view(torch.float8_e4m3fn).reshape(2, -1)
    got = kernels.dequantize_into_scratch(q, torch.ones(()), None, torch.float32)
    assert torch.equal(got.reshape(-1), torch.tensor(expected))
