"""The Triton AWQ kernel, fed AutoAWQ's GEMM tensors, against the reference dequantize in float64: compiled
on a CUDA GPU when there is one, else run on CPU by Triton's interpreter (TRITON_INTERPRET=1), the same code."""

import os

import pytest
import torch

from qcore_awq import kernels
from qcore_awq.format import AWQTensors, to_tensors

pytest.importorskip("triton", reason="Triton is not installed: `tox -e py` installs it and runs these tests (Triton's interpreter on CPU)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the repository's conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU
assert DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1", "no GPU and no TRITON_INTERPRET=1: run from the repository root"

from qcore_awq import triton_kernels  # noqa: E402


def random_layer(in_features, out_features, group_size, seed):
    g = torch.Generator().manual_seed(seed)
    groups = in_features // group_size
    return AWQTensors(torch.randint(0, 16, (in_features, out_features), generator=g, dtype=torch.uint8),
                      torch.randint(0, 16, (groups, out_features), generator=g, dtype=torch.uint8),
                      (torch.rand(groups, out_features, generator=g) * 0.02 + 0.001).half())


@pytest.mark.parametrize(("in_features", "out_features", "group_size"), [(576, 192, 64), (128, 72, 32), (256, 64, 128)])
def test_triton_matmul_on_the_gemm_tensors_matches_the_reference(in_features, out_features, group_size):
    layer = random_layer(in_features, out_features, group_size, seed=in_features + out_features)
    gemm = to_tensors(layer, "gemm")
    reference = kernels.dequantize(layer.codes, layer.zeros, layer.scales, torch.float64)  # (out, in)
    for rows in (1, 19):
        x = torch.randn(rows, in_features)
        expected = x.double() @ reference.T
        y = triton_kernels.matmul(x.to(DEVICE), *(gemm[k].to(DEVICE) for k in ("qweight", "qzeros", "scales")), group_size)
        assert y.dtype == torch.float32 and y.shape == (rows, out_features)
        torch.testing.assert_close(y.cpu().double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_tensors_that_do_not_fit_are_refused():
    gemm = to_tensors(random_layer(128, 64, 32, seed=0), "gemm")
    with pytest.raises(ValueError, match="do not fit"):
        triton_kernels.matmul(torch.zeros(1, 96), gemm["qweight"], gemm["qzeros"], gemm["scales"], 32)
