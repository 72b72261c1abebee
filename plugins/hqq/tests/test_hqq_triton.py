"""The Triton HQQ kernel, fed hqq's packed W_q, scale and zero, against the reference dequantize in float64:
compiled on a CUDA GPU when there is one, else run on CPU by Triton's interpreter (TRITON_INTERPRET=1)."""

import os

import pytest
import torch

from qcore_hqq import kernels, quantizer
from qcore_hqq.bitpack import pack
from qcore_hqq.format import HqqMeta

pytest.importorskip("triton", reason="Triton is not installed: `tox -e py` installs it and runs these tests (Triton's interpreter on CPU)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the repository's conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU
assert DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1", "no GPU and no TRITON_INTERPRET=1: run from the repository root"

from qcore_hqq import triton_kernels  # noqa: E402


@pytest.mark.parametrize(("nbits", "group_size", "axis", "shape"),
                         [(4, 64, 1, (96, 192)), (4, 32, 0, (64, 128)), (8, 64, 1, (72, 128)), (2, 16, 1, (64, 96)),
                          (1, 32, 0, (40, 64))])
def test_triton_matmul_on_hqq_tensors_matches_the_reference(nbits, group_size, axis, shape):
    g = torch.Generator().manual_seed(nbits * 100 + group_size + axis)
    weight = torch.randn(*shape, generator=g) * 0.05
    q = quantizer.quantize(weight, nbits, group_size, axis, round_zero=nbits == 4)
    meta = HqqMeta(nbits=nbits, group_size=group_size, axis=axis, shape=shape, round_zero=nbits == 4)
    W_q = pack(q.W_q, meta.packing)
    reference = kernels.dequantize(W_q, q.scale, q.zero, meta, torch.float64)  # (out, in)
    for rows in (1, 19):
        x = torch.randn(rows, shape[1], generator=g)
        expected = x.double() @ reference.T
        y = triton_kernels.matmul(x.to(DEVICE), W_q.to(DEVICE), q.scale.to(DEVICE), q.zero.to(DEVICE), nbits, group_size,
                                  axis, shape)
        assert y.dtype == torch.float32 and y.shape == (rows, shape[0])
        torch.testing.assert_close(y.cpu().double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_tensors_that_do_not_fit_are_refused():
    q = quantizer.quantize(torch.randn(64, 128), 4, 64, 1, round_zero=True)
    W_q = pack(q.W_q, "4bit_u8")
    with pytest.raises(ValueError, match="do not fit"):
        triton_kernels.matmul(torch.zeros(1, 128), W_q[:-1], q.scale, q.zero, 4, 64, 1, (64, 128))
    with pytest.raises(ValueError, match="nbits"):
        triton_kernels.matmul(torch.zeros(1, 128), W_q, q.scale, q.zero, 3, 64, 1, (64, 128))
