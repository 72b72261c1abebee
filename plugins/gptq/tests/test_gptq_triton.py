"""The Triton GPTQ kernel against the reference dequantize, in float64: compiled on a CUDA GPU when
there is one, else run on CPU by Triton's interpreter (TRITON_INTERPRET=1), the same kernel code."""

import os

import pytest
import torch

from qcore_gptq.format import to_tensors
from qcore_gptq.gptq import gptq_quantize
from qcore_gptq.linear import GPTQQuantLinear

pytest.importorskip("triton", reason="Triton is not installed: `tox -e py` installs it and runs these tests (Triton's interpreter on CPU)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the repository's conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU
assert DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1", "no GPU and no TRITON_INTERPRET=1: run from the repository root"

from qcore_gptq import triton_kernels  # noqa: E402


@pytest.mark.parametrize(
    ("bits", "in_features", "group_size", "desc_act", "sym"),
    [(4, 576, 128, True, False), (4, 576, 128, False, True), (2, 96, 32, False, False), (8, 128, -1, False, True),
     (4, 192, 64, True, True)],
)
def test_triton_matmul_matches_the_reference(bits, in_features, group_size, desc_act, sym):
    torch.manual_seed(0)
    W, X = torch.randn(64, in_features), torch.randn(300, in_features)
    result = gptq_quantize(W, X.T @ X, bits=bits, group_size=group_size, desc_act=desc_act, sym=sym)
    tensors = to_tensors(result, bits, "gptq_v2")
    layer = GPTQQuantLinear(in_features, 64, bias=False, bits=bits, group_size=group_size, device="cpu")
    layer.set_tensors(tensors["qweight"], result.zeros, tensors["scales"], result.g_idx, None)
    for rows in (1, 19):
        x = torch.randn(rows, in_features)
        ref = x.double() @ layer.dequantized_weight(torch.float64).T
        y = triton_kernels.matmul(x.to(DEVICE), *(t.to(DEVICE) for t in (layer.qweight, layer.zeros, layer.scales, layer.g_idx)),
                                  bits)
        torch.testing.assert_close(y.cpu().double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def test_three_bit_layers_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="bits"):
        triton_kernels.matmul(torch.zeros(1, 32), torch.zeros(3, 4, dtype=torch.int32), torch.zeros(1, 4),
                              torch.zeros(1, 4), torch.zeros(32, dtype=torch.int64), 3)
