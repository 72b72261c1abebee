"""Every native entry point refuses bad tensors with a Python exception before a pointer reaches C.

The shared crash tests (qcore.testing.LookupOpsSafety) run the bad calls in a subprocess: a call that
reached C with a wrong size would crash the interpreter, which in-process would take pytest down.
"""

from qcore.testing import LookupOpsSafety


class TestOpsSafety(LookupOpsSafety):
    package = "qcore_torchao"


def test_fp8_ops_refuse_bad_tensors_and_never_crash():
    """torch.ops.qcore_torchao.{fp8_gemv, fp8_dequantize} (qcore's FP8 kernel, serving torchao's Float8Tensor)."""
    import torch

    from qcore import fp8_misuse

    lines = fp8_misuse.run_in_subprocess("qcore_torchao", "qcore_torchao").splitlines()
    cases = fp8_misuse.misuse_cases("qcore_torchao")
    valid = sum(name.startswith("valid") for name, _ in cases)
    assert not any(ln.startswith("ACCEPTED") for ln in lines), lines
    assert sum(ln.startswith("ok valid") for ln in lines) == valid
    assert sum(ln.startswith("raised") for ln in lines) == len(cases) - valid >= 50 and lines[-1] == "alive"
    assert "raised x 9 rows | qcore_torchao.fp8_gemv: takes at most 8 rows, got 9; dequantize and multiply" in lines
    y = torch.ops.qcore_torchao.fp8_gemv(torch.empty(3, 128, device="meta"),
                                         torch.empty(32, 128, dtype=torch.float8_e4m3fn, device="meta"),
                                         torch.empty(32, 1, device="meta"), 1, 128)
    assert y.shape == (3, 32) and y.device.type == "meta"
