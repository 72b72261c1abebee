"""qcore-plugin-fp8's CPU kernels as checked torch ops: ``torch.ops.qcore_fp8.{gemv, dequantize}``.

The C code (``csrc/qcore_fp8_kernels.c``, compiled into ``qcore_fp8/_kernels*.so`` when the wheel is
built, see docs/kernels.md) decodes float8_e4m3fn inside the product: no dequantized copy of the weight.

- ``gemv(x, weight, scale_inv, block_n, block_k) -> y``: ``x (m, k)`` float32, ``m <= MAX_ROWS``;
  ``weight (n, k)`` float8_e4m3fn; ``scale_inv`` float32 ``(ceil(n / block_n), ceil(k / block_k))``, or
  ``()`` with ``block_n = block_k = 0`` (one scale per tensor) -> ``y (m, n)`` float32
  ``= x @ (float32(weight) * scale_inv per block).T``, equal to that float32 product up to summation order.
- ``dequantize(weight, scale_inv, block_n, block_k, out) -> ()``: writes the dequantized weight into
  ``out (n, k)``, float32 (bit-identical to ``float32(weight) * scale_inv``) or bfloat16 (that, rounded once).

Every op checks dtype, shape, contiguity and storage size of every tensor before a pointer reaches
C (:class:`qcore.native.KernelArgumentError` otherwise) and has a fake implementation (meta tensors,
``torch.compile``). Without the binary the same ops run in torch (dequantize into a reused buffer,
then ``F.linear``), with one warning.
"""

from __future__ import annotations

import ctypes
import math

import torch

from qcore import native
from qcore.native import check, check_tensor

from . import kernels

PREFIX = "qcfp8"
MAX_ROWS = 8  # QF8_MAX_ROWS in the C source
ISA_NAMES = ("portable", "avx2", "avx512")
_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
SIGNATURES = {
    "qcfp8_gemv": (None, _P, _I64, _I64, _P, _P, _I64, _I64, _I64, _P, _I32),
    "qcfp8_dequant": (None, _P, _P, _I64, _I64, _I64, _I64, _P, _I32, _I32),
    "qcfp8_isa": (_I32,),
    "qcfp8_cpu_isa": (_I32,),
    "qcfp8_set_isa_cap": (None, _I32),
}


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (warned once) when the package was installed without a C compiler."""
    return native.load_library("qcore_fp8", "_kernels", SIGNATURES,
                               what_instead="torch path (dequantize each FP8 weight, then F.linear)")


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    lib = library()
    return "torch" if lib is None else ISA_NAMES[lib.qcfp8_isa()]


def cpu_isas() -> list[str]:
    """Every variant this CPU can run (for tests that run each one with :func:`set_isa_cap`)."""
    lib = library()
    return [] if lib is None else list(ISA_NAMES[: lib.qcfp8_cpu_isa() + 1])


def set_isa_cap(name: str) -> None:
    """Cap the variant the kernels pick (tests lower it to run the AVX2 and portable code on an AVX-512 CPU)."""
    lib = library()
    if lib is not None:
        lib.qcfp8_set_isa_cap(ISA_NAMES.index(name))


def _grid(op: str, n: int, k: int, block_n: int, block_k: int) -> tuple[tuple[int, ...], int, int]:
    """The shape scale_inv must have and the (bn, bk) handed to C (per tensor: the whole weight, one block)."""
    check(op, isinstance(n, int) and isinstance(k, int) and n > 0 and k > 0, f"weight must be (n, k) with n, k > 0, got ({n}, {k})")
    if block_n == 0 and block_k == 0:
        return (), n, k
    check(op, block_n > 0 and block_k > 0, f"block sizes must both be positive (or both 0 for one scale per tensor), "
          f"got ({block_n}, {block_k})")
    return (math.ceil(n / block_n), math.ceil(k / block_k)), block_n, block_k


def _check_weight(op: str, weight: object) -> tuple[int, int]:
    check(op, isinstance(weight, torch.Tensor) and weight.dim() == 2, "weight must be a 2-D float8_e4m3fn tensor (n, k)")
    return int(weight.shape[0]), int(weight.shape[1])


def gemv(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block_n: int, block_k: int) -> torch.Tensor:
    """``x (m, k)`` float32 @ dequantized ``weight (n, k)``.T -> float32 ``(m, n)``, ``m <= MAX_ROWS`` (module docstring)."""
    op = "qcore_fp8.gemv"
    n, k = _check_weight(op, weight)
    grid, bn, bk = _grid(op, n, k, block_n, block_k)
    check(op, isinstance(x, torch.Tensor) and x.dim() == 2, "x must be a 2-D tensor (m, k)")
    check(op, x.shape[0] <= MAX_ROWS, f"takes at most {MAX_ROWS} rows, got {x.shape[0]}; dequantize and multiply")
    check_tensor(op, "x", x, torch.float32, (x.shape[0], k))
    check_tensor(op, "weight", weight, kernels.FP8_DTYPE, (n, k))
    check_tensor(op, "scale_inv", scale_inv, torch.float32, grid)
    if x.shape[0] == 0:
        return torch.empty(0, n, dtype=torch.float32)
    lib = library()
    if lib is None:
        w = kernels.dequantize_into_scratch(weight, scale_inv, None if not grid else (block_n, block_k), torch.float32)
        return torch.nn.functional.linear(x, w)
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    lib.qcfp8_gemv(x.data_ptr(), x.shape[0], k, weight.data_ptr(), scale_inv.data_ptr(), n, bn, bk, y.data_ptr(),
                   native.num_threads())
    return y


def gemv_fake(x, weight, scale_inv, block_n, block_k):
    op = "qcore_fp8.gemv"
    n, k = _check_weight(op, weight)
    grid, _, _ = _grid(op, n, k, block_n, block_k)
    check(op, x.dim() == 2 and x.shape[0] <= MAX_ROWS, "x must be (m, k) with m <= 8")
    _check_fake(op, {"x": (x, torch.float32, (x.shape[0], k)), "weight": (weight, kernels.FP8_DTYPE, (n, k)),
                     "scale_inv": (scale_inv, torch.float32, grid)})
    return x.new_empty(x.shape[0], n)


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block_n: int, block_k: int, out: torch.Tensor) -> None:
    """Write the dequantized ``weight (n, k)`` into ``out`` (float32 or bfloat16, ``(n, k)``)."""
    op = "qcore_fp8.dequantize"
    n, k = _check_weight(op, weight)
    grid, bn, bk = _grid(op, n, k, block_n, block_k)
    check_tensor(op, "weight", weight, kernels.FP8_DTYPE, (n, k))
    check_tensor(op, "scale_inv", scale_inv, torch.float32, grid)
    check_tensor(op, "out", out, (torch.float32, torch.bfloat16), (n, k))
    lib = library()
    if lib is None:
        out.copy_(kernels.dequantize_into_scratch(weight, scale_inv, None if not grid else (block_n, block_k), torch.float32))
        return
    lib.qcfp8_dequant(weight.data_ptr(), scale_inv.data_ptr(), n, k, bn, bk, out.data_ptr(),
                      int(out.dtype == torch.bfloat16), native.num_threads())


def dequantize_fake(weight, scale_inv, block_n, block_k, out):
    op = "qcore_fp8.dequantize"
    n, k = _check_weight(op, weight)
    grid, _, _ = _grid(op, n, k, block_n, block_k)
    _check_fake(op, {"weight": (weight, kernels.FP8_DTYPE, (n, k)), "scale_inv": (scale_inv, torch.float32, grid),
                     "out": (out, (torch.float32, torch.bfloat16), (n, k))})


def _check_fake(op: str, tensors: dict[str, tuple[torch.Tensor, torch.dtype | tuple[torch.dtype, ...], tuple[int, ...]]]) -> None:
    """The fake implementations' checks: dtype, shape and one device (meta and fake tensors have no data)."""
    devices = {t.device for t, _, _ in tensors.values()}
    check(op, len(devices) == 1, f"tensors on different devices: {sorted(map(str, devices))}")
    for name, (t, dtype, shape) in tensors.items():
        dtypes = (dtype,) if isinstance(dtype, torch.dtype) else dtype
        check(op, t.dtype in dtypes and tuple(t.shape) == tuple(shape),
              f"{name} is {t.dtype} {list(t.shape)}, expected {dtypes[0]} {list(shape)}")


_gemv_op = torch.library.custom_op("qcore_fp8::gemv", gemv, mutates_args=())
_gemv_op.register_fake(gemv_fake)
_dequantize_op = torch.library.custom_op("qcore_fp8::dequantize", dequantize, mutates_args=("out",))
_dequantize_op.register_fake(dequantize_fake)
library()  # opened at import (a ctypes load, or the one warning): torch.compile traces forward without a lock in it
