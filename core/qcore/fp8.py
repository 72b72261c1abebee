"""The Python side of the shared FP8 kernels (``qcore/include/qcore/fp8.h``): checked calls and torch ops.

A plugin that serves float8_e4m3fn weights builds ``fp8.h`` into its own binary (``QC_FP8_EXPORTS(prefix)``)
and calls :func:`register_ops` once, which defines under its namespace (names chosen by the plugin):

- ``gemv(x, weight, scale_inv, block_n, block_k) -> y``: ``x (m, k)`` float32, ``m <= MAX_ROWS``;
  ``weight (n, k)`` float8_e4m3fn; ``scale_inv`` float32 ``(ceil(n / block_n), ceil(k / block_k))``, or
  ``()`` with ``block_n = block_k = 0`` (one scale per tensor) -> ``y (m, n)`` float32
  ``= x @ (float32(weight) * scale_inv per block).T``, equal to that float32 product up to summation order.
  One scale per row is ``block_n = 1, block_k = k`` (scale_inv ``(n, 1)``).
- ``dequantize(weight, scale_inv, block_n, block_k, out) -> ()``: writes the dequantized weight into
  ``out (n, k)``, float32 (bit-identical to ``float32(weight) * scale_inv``) or bfloat16 (that, rounded once).

Every op checks dtype, shape, contiguity and storage size of every tensor before a pointer reaches C
(:class:`qcore.native.KernelArgumentError` otherwise) and has a fake implementation (meta tensors,
``torch.compile``). Without the binary the same ops run in torch (dequantize, then ``F.linear``).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable

import torch

from qcore import native
from qcore.lut4 import _check_fake
from qcore.native import check, check_tensor

MAX_ROWS = 8  # QF8_MAX_ROWS in fp8.h
ISA_NAMES = ("portable", "avx2", "avx512")
FP8_DTYPE = torch.float8_e4m3fn
_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int

Dequantize = Callable[[torch.Tensor, torch.Tensor, "tuple[int, int] | None", torch.dtype], torch.Tensor]


def signatures(prefix: str) -> dict[str, tuple]:
    """ctypes signatures of the functions ``QC_FP8_EXPORTS(prefix)`` defines."""
    return {
        f"{prefix}_fp8_gemv": (None, _P, _I64, _I64, _P, _P, _I64, _I64, _I64, _P, _I32),
        f"{prefix}_fp8_dequant": (None, _P, _P, _I64, _I64, _I64, _I64, _P, _I32, _I32),
        f"{prefix}_fp8_isa": (_I32,),
    }


def scale_in_place(w32: torch.Tensor, scales: torch.Tensor, block_size: tuple[int, int] | None) -> torch.Tensor:
    """``w32 (N, K)`` float32 holding the FP8 values, multiplied in place by the float32 scales of each
    ``block_size`` block (None: one scale for the tensor); edge blocks cover the rows/columns that exist."""
    if block_size is None:
        return w32.mul_(scales.reshape(()))
    bn, bk = block_size
    rows, cols = w32.shape
    row_scales = scales.repeat_interleave(bn, dim=0)[:rows]  # (N, ceil(K/bk)): small
    full = cols // bk
    if full:
        w32[:, : full * bk].unflatten(1, (full, bk)).mul_(row_scales[:, :full, None])
    if full * bk < cols:
        w32[:, full * bk:].mul_(row_scales[:, full:full + 1])
    return w32


def torch_dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block_size: tuple[int, int] | None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``float32(weight) * scale_inv`` per ``block_size`` block (None: one scale), rounded once to ``dtype``."""
    w = scale_in_place(weight.to(torch.float32), scale_inv.float(), block_size)
    return w if dtype == torch.float32 else w.to(dtype)


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


def register_ops(namespace: str, prefix: str, library: Callable[[], ctypes.CDLL | None],
                 names: tuple[str, str] = ("fp8_gemv", "fp8_dequantize"),
                 fallback: Dequantize = torch_dequantize) -> dict[str, Callable]:
    """Define the GEMV and dequantize ops (module docstring) as ``torch.ops.<namespace>.<names[0]>`` and
    ``<names[1]>``.

    :param namespace: the plugin's torch.library namespace, e.g. ``"qcore_fp8"``.
    :param prefix: the ``QC_FP8_EXPORTS`` prefix its binary was built with, e.g. ``"qcfp8"``.
    :param library: returns the loaded binary (:func:`qcore.native.load_library`) or None (torch paths).
    :param names: the two ops' names.
    :param fallback: the dequantize the torch paths run without the binary (``torch_dequantize``'s signature).
    :returns: the checked implementations by the ops' names (called directly on hot paths).
    """
    gemv_name, dequantize_name = names
    c_gemv, c_dequant = f"{prefix}_fp8_gemv", f"{prefix}_fp8_dequant"

    def gemv(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block_n: int, block_k: int) -> torch.Tensor:
        op = f"{namespace}.{gemv_name}"
        n, k = _check_weight(op, weight)
        grid, bn, bk = _grid(op, n, k, block_n, block_k)
        check(op, isinstance(x, torch.Tensor) and x.dim() == 2, "x must be a 2-D tensor (m, k)")
        check(op, x.shape[0] <= MAX_ROWS, f"takes at most {MAX_ROWS} rows, got {x.shape[0]}; dequantize and multiply")
        check_tensor(op, "x", x, torch.float32, (x.shape[0], k))
        check_tensor(op, "weight", weight, FP8_DTYPE, (n, k))
        check_tensor(op, "scale_inv", scale_inv, torch.float32, grid)
        if x.shape[0] == 0:
            return torch.empty(0, n, dtype=torch.float32)
        lib = library()
        if lib is None:
            return torch.nn.functional.linear(x, fallback(weight, scale_inv, (block_n, block_k) if grid else None,
                                                          torch.float32))
        y = torch.empty(x.shape[0], n, dtype=torch.float32)
        getattr(lib, c_gemv)(x.data_ptr(), x.shape[0], k, weight.data_ptr(), scale_inv.data_ptr(), n, bn, bk,
                             y.data_ptr(), native.num_threads())
        return y

    def gemv_fake(x, weight, scale_inv, block_n, block_k):
        op = f"{namespace}.{gemv_name}"
        n, k = _check_weight(op, weight)
        grid, _, _ = _grid(op, n, k, block_n, block_k)
        check(op, x.dim() == 2 and x.shape[0] <= MAX_ROWS, f"x must be (m, k) with m <= {MAX_ROWS}")
        _check_fake(op, {"x": (x, torch.float32, (x.shape[0], k)), "weight": (weight, FP8_DTYPE, (n, k)),
                         "scale_inv": (scale_inv, torch.float32, grid)})
        return x.new_empty(x.shape[0], n)

    def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block_n: int, block_k: int, out: torch.Tensor) -> None:
        op = f"{namespace}.{dequantize_name}"
        n, k = _check_weight(op, weight)
        grid, bn, bk = _grid(op, n, k, block_n, block_k)
        check_tensor(op, "weight", weight, FP8_DTYPE, (n, k))
        check_tensor(op, "scale_inv", scale_inv, torch.float32, grid)
        check_tensor(op, "out", out, (torch.float32, torch.bfloat16), (n, k))
        lib = library()
        if lib is None:
            out.copy_(fallback(weight, scale_inv, (block_n, block_k) if grid else None, torch.float32))
            return
        getattr(lib, c_dequant)(weight.data_ptr(), scale_inv.data_ptr(), n, k, bn, bk, out.data_ptr(),
                                int(out.dtype == torch.bfloat16), native.num_threads())

    def dequantize_fake(weight, scale_inv, block_n, block_k, out):
        op = f"{namespace}.{dequantize_name}"
        n, k = _check_weight(op, weight)
        grid, _, _ = _grid(op, n, k, block_n, block_k)
        _check_fake(op, {"weight": (weight, FP8_DTYPE, (n, k)), "scale_inv": (scale_inv, torch.float32, grid),
                         "out": (out, (torch.float32, torch.bfloat16), (n, k))})

    for name, impl, fake, mutates in ((gemv_name, gemv, gemv_fake, ()),
                                      (dequantize_name, dequantize, dequantize_fake, ("out",))):
        custom = torch.library.custom_op(f"{namespace}::{name}", impl, mutates_args=mutates)
        custom.register_fake(fake)
    return {gemv_name: gemv, dequantize_name: dequantize}
