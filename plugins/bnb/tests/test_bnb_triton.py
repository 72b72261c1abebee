"""The Triton kernels against bitsandbytes (the oracle): compiled on a CUDA GPU when there is one,
else run on CPU by Triton's interpreter (TRITON_INTERPRET=1), which executes the same kernel code."""

import os

import bitsandbytes.functional as bnbF
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed: `tox -e py` installs it and runs these tests (Triton's interpreter on CPU)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the repository's conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU
assert DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1", "no GPU and no TRITON_INTERPRET=1: run from the repository root"

from qcore_bnb import triton_kernels  # noqa: E402


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize(("shape", "blocksize"), [((96, 128), 64), ((33, 100), 64), ((7, 9), 64), ((64, 256), 128)])
def test_triton_dequantize_is_bit_identical_to_bitsandbytes(quant_type, shape, blocksize):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    packed, state = bnbF.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
    expected = bnbF.dequantize_4bit(packed, state)
    got = triton_kernels.dequantize(packed.to(DEVICE), state.absmax.to(DEVICE), blocksize, shape, state.code.to(DEVICE),
                                    torch.float32)
    assert torch.equal(got.cpu(), expected)


# Triton 3.9's interpreter computes bfloat16 tl.dot wrongly (a plain 16x16 bf16 product is off by
# 1e10 there), so bfloat16 is checked on a GPU only; float16 exercises the same 16-bit code path.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "shape"), [(1, (96, 128)), (5, (70, 192)), (20, (33, 100))])
def test_triton_matmul_matches_float64(dtype, rows, shape):
    torch.manual_seed(1)
    w = torch.randn(*shape)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
    exact = bnbF.dequantize_4bit(packed, state).double()
    x = torch.randn(rows, shape[1])
    y = triton_kernels.matmul(x.to(DEVICE, dtype), packed.to(DEVICE), state.absmax.to(DEVICE), 64, shape,
                              state.code.to(DEVICE))
    assert y.dtype == dtype and y.shape == (rows, shape[0])
    ref = x.to(dtype).double() @ exact.to(dtype).double().T  # the same rounding of the inputs
    tol = (1e-5 if dtype == torch.float32 else 1e-2) * ref.abs().max().item()
    torch.testing.assert_close(y.cpu().double(), ref, rtol=0, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="routing to Triton happens for CUDA tensors only")
def test_linear4bit_on_cuda_uses_triton(monkeypatch):
    from qcore_bnb import kernels, linear
    from qcore_bnb.format import QuantState4bit

    torch.manual_seed(2)
    w = torch.randn(96, 128)
    packed, absmax = kernels.quantize_4bit(w, 64, "nf4")
    layer = linear.Linear4bit(128, 96, False, torch.float32, device="cpu")
    layer.set_state(packed, QuantState4bit(absmax=absmax, shape=(96, 128), blocksize=64, quant_type="nf4",
                                           quant_map=kernels.code_4bit("nf4"), dtype="float32"))
    expected = layer(torch.ones(2, 128))
    layer.to("cuda")  # the quant state's 16-value code stays on the CPU: the kernel wrapper moves it
    calls = []
    real = triton_kernels.matmul
    monkeypatch.setattr(triton_kernels, "matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(linear, "triton_kernels", lambda: triton_kernels)
    torch.testing.assert_close(layer(torch.ones(2, 128, device="cuda")).cpu(), expected, rtol=1e-5, atol=1e-4)
    assert calls
