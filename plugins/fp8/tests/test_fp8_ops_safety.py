"""torch.ops.qcore_fp8.{gemv, dequantize} refuse bad tensors with KernelArgumentError before a pointer reaches C.

The bad calls (qcore.fp8_misuse, shared with every plugin built on qcore's FP8 kernel) run in a subprocess:
one that reached C with a wrong size could crash the interpreter, which in-process would take pytest down
instead of failing one test.
"""

import pytest
import torch

from qcore import fp8_misuse
from qcore.testing import LookupOpsSafety
from qcore_fp8 import ops

NAMES = ("gemv", "dequantize")


@pytest.mark.skipif(ops.library() is None, reason="the plugin was installed without its compiled kernels")
def test_wrong_sizes_strides_dtypes_and_lying_buffers_raise_and_never_crash():
    lines = fp8_misuse.run_in_subprocess("qcore_fp8", "qcore_fp8", NAMES).splitlines()
    cases = fp8_misuse.misuse_cases("qcore_fp8", NAMES)
    valid = sum(name.startswith("valid") for name, _ in cases)
    assert not any(ln.startswith("ACCEPTED") for ln in lines), lines
    assert sum(ln.startswith("ok valid") for ln in lines) == valid
    assert sum(ln.startswith("raised") for ln in lines) == len(cases) - valid >= 50
    assert lines[-1] == "alive"
    assert "raised weight storage cut to 64 bytes | qcore_fp8.gemv: weight's storage is smaller than its shape says" in lines
    assert "raised scale grid by exact division | qcore_fp8.gemv: scale_inv has shape [2, 2], expected [2, 3]" in lines


def _args(op, device="cpu"):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(32, 128, generator=g) * 10).to(torch.float8_e4m3fn).to(device)
    inv = (torch.rand(2, 3, generator=g) + 0.1).to(device)
    if op == "gemv":
        return (torch.randn(3, 128, generator=g).to(device), w, inv, 16, 48)
    return (w, inv, 16, 48, torch.empty(32, 128, device=device))


def test_ops_have_fake_implementations_for_meta_tensors():
    y = torch.ops.qcore_fp8.gemv(*_args("gemv", "meta"))
    assert y.shape == (3, 32) and y.device.type == "meta" and y.dtype == torch.float32
    torch.ops.qcore_fp8.dequantize(*_args("dequantize", "meta"))
    per_tensor = torch.ops.qcore_fp8.gemv(torch.empty(1, 128, device="meta"),
                                          torch.empty(32, 128, dtype=torch.float8_e4m3fn, device="meta"),
                                          torch.empty((), device="meta"), 0, 0)
    assert per_tensor.shape == (1, 32)


@pytest.mark.parametrize("op", ["gemv", "dequantize"])
def test_opcheck(op):
    # opcheck's "test_schema" compares the inputs before and after with a multiply that torch 2.13 does not
    # implement for float8_e4m3fn ("mul_cpu_reduced_float"); the mutation contract it would check is covered by
    # the other three tests (autograd registration, fake tensors, AOT dispatch with the out argument mutated).
    result = torch.library.opcheck(getattr(torch.ops.qcore_fp8, op), _args(op),
                                   test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))
    assert set(result.values()) == {"SUCCESS"}


class TestLookupOpsSafety(LookupOpsSafety):
    """The binary also builds qcore's lookup header (its float32 GEMV serves the layers left in float): the
    shared crash tests of those ops."""

    package = "qcore_fp8"
