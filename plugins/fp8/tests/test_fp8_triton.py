"""The Triton kernel against the test's own dequantizer in float64: compiled on a CUDA GPU when there is one,
else run on CPU by Triton's interpreter (TRITON_INTERPRET=1), which executes the same kernel code."""

import os

import pytest
import torch
from fp8_helpers import reference_dequantize, reference_quantize

pytest.importorskip("triton", reason="Triton is not installed: `tox -e py` installs it and runs these tests (Triton's interpreter on CPU)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the repository's conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU
assert DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1", "no GPU and no TRITON_INTERPRET=1: run from the repository root"

from qcore_fp8 import triton_kernels  # noqa: E402

# Triton 3.9's interpreter computes bfloat16 tl.dot wrongly, so bfloat16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def test_decoding_every_e4m3_code():
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F].view(torch.float8_e4m3fn)  # NaN codes are refused at load
    weight = codes.reshape(1, -1)
    x = torch.eye(weight.shape[1], dtype=torch.float32)
    y = triton_kernels.matmul(x.to(DEVICE), weight.to(DEVICE), torch.ones(()), None)
    assert torch.equal(y.cpu()[:, 0], weight.float()[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "shape", "block"), [(1, (96, 128), (128, 128)), (5, (300, 200), (128, 128)),
                                                       (20, (70, 130), (32, 48)), (3, (64, 96), None)])
def test_triton_matmul_matches_float64(dtype, rows, shape, block):
    g = torch.Generator().manual_seed(1)
    q, inv = reference_quantize(torch.randn(*shape, generator=g) * 0.05, block)
    exact = reference_dequantize(q, inv, block)
    x = torch.randn(rows, shape[1], generator=g)
    y = triton_kernels.matmul(x.to(DEVICE, dtype), q.to(DEVICE), inv.to(DEVICE), block)
    assert y.dtype == dtype and y.shape == (rows, shape[0])
    ref = x.to(dtype).double() @ exact.to(dtype).double().T  # the same rounding of the inputs
    tol = (1e-5 if dtype == torch.float32 else 1e-2) * ref.abs().max().item()
    torch.testing.assert_close(y.cpu().double(), ref, rtol=0, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU: routing to Triton happens for CUDA tensors only")
def test_fp8_linear_on_cuda_uses_triton(monkeypatch):
    from qcore_fp8 import linear
    from qcore_fp8.linear import Fp8Linear

    g = torch.Generator().manual_seed(2)
    q, inv = reference_quantize(torch.randn(300, 200, generator=g) * 0.05, (128, 128))
    layer = Fp8Linear(200, 300, False, (128, 128), device="cpu")
    layer.weight, layer.weight_scale_inv = q, inv
    x = torch.randn(2, 7, 200, generator=g)
    with torch.no_grad():
        expected = layer(x)
        layer.to("cuda")
        calls = []
        real = triton_kernels.matmul
        monkeypatch.setattr(triton_kernels, "matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
        monkeypatch.setattr(linear, "triton_kernels", lambda: triton_kernels)
        torch.testing.assert_close(layer(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    assert calls
