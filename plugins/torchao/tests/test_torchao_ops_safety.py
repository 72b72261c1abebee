"""Every native entry point refuses bad tensors with a Python exception before a pointer reaches C.

Run in a subprocess: a call that reached C with a wrong size would crash the interpreter, which
in-process would take pytest down instead of failing one test.
"""

import pytest
import torch

from qcore.lut4_misuse import run_in_subprocess


def test_wrong_sizes_strides_dtypes_and_devices_raise_and_never_crash():
    out = run_in_subprocess("qcore_torchao")
    lines = out.splitlines()
    assert "ACCEPTED" not in out, out
    assert sum(ln.startswith("ok valid") for ln in lines) == 4, out
    assert sum(ln.startswith("raised") for ln in lines) >= 40, out
    assert "raised 64-byte packed claiming (65536, 4096) | qcore_torchao.lut4_gemm: packed has shape [64], expected [134217728]" in out


@pytest.mark.parametrize("op", ["lut4_gemm", "lut4_dequantize", "int8_gemm"])
def test_ops_have_fake_implementations_for_meta_tensors_and_compile(op):
    import qcore_torchao.ops  # noqa: F401 - registers the ops

    n, k, bs = 32, 128, 64
    meta = dict(packed=torch.empty(n * k // 2, dtype=torch.uint8, device="meta"),
                absmax=torch.empty(n * k // bs, device="meta"), code=torch.empty(16, device="meta"))
    if op == "int8_gemm":
        y = torch.ops.qcore_torchao.int8_gemm(torch.empty(3, k, device="meta"), torch.empty(n, k, dtype=torch.int8, device="meta"),
                                           torch.empty(n, device="meta"))
        assert y.shape == (3, n) and y.device.type == "meta"
    elif op == "lut4_gemm":
        y = torch.ops.qcore_torchao.lut4_gemm(torch.empty(3, k, device="meta"), meta["packed"], meta["absmax"], meta["code"],
                                          n, k, bs)
        assert y.shape == (3, n) and y.device.type == "meta"
    else:
        torch.ops.qcore_torchao.lut4_dequantize(meta["packed"], meta["absmax"], meta["code"], n, k, bs,
                                            torch.empty(n, k, device="meta"))
    torch.library.opcheck(getattr(torch.ops.qcore_torchao, op), _real_args(op, n, k, bs))


def _real_args(op, n, k, bs):
    packed = torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8)
    absmax, code = torch.rand(n * k // bs), torch.randn(16)
    if op == "int8_gemm":
        return (torch.randn(2, k), torch.randint(-128, 128, (n, k), dtype=torch.int8), torch.rand(n))
    if op == "lut4_gemm":
        return (torch.randn(2, k), packed, absmax, code, n, k, bs)
    return (packed, absmax, code, n, k, bs, torch.empty(n, k))
