"""4-bit lookup kernels for CPU, shared by plugins (C in ``lut4.c``, built by :mod:`qcore.native`).

The layout: a weight ``(N, K)`` flattened row-major, element ``i`` stored as a 4-bit index
(nibble ``i`` of ``packed``: byte ``i // 2``, high nibble first) into a 16-value float32
``code``, scaled by ``scales[i // blocksize]``::

    W.flat[i] = code[nibble(i)] * scales[i // blocksize]

bitsandbytes' NF4/FP4 is exactly this (``scales`` = absmax). An affine int4 format such as
GPTQ's, ``s * (q - z)``, is this with ``code = 0..15`` and the zero-point term subtracted
after the product (``sum_k x_k s z`` per group, one small matmul).

The kernels keep the code in one SIMD register (AVX-512; two with AVX2) and decode nibbles
with register permutes; a portable C loop serves other CPUs. The GEMM never materializes W
and is built for few rows (decoding); for many rows, dequantize (also in C) and let torch
multiply. The same file has the 8-bit sibling, :func:`int8_matmul` (int8 weights, one scale
per output row).
"""

from __future__ import annotations

import ctypes
import math
import threading
from pathlib import Path

import torch

from qcore import native

MAX_BLOCK = 4096
MAX_ROWS = 64
_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def lib(march: str = "native") -> ctypes.CDLL | None:
    """lut4.c compiled for this CPU (None without a C compiler or with ``QCORE_NATIVE=0``)."""
    return native.load(f"qcore.lut4.{march}", Path(__file__).with_name("lut4.c"), {
        "qc_lut4_dequant": (None, _P, _P, _P, _I64, _I64, _P, _I32, _I32),
        "qc_lut4_gemm": (None, _P, _I64, _I64, _P, _P, _P, _I64, _I64, _P, _I32),
        "qc_int8_gemm": (None, _P, _I64, _I64, _P, _P, _I64, _P, _I32),
    }, march=march)


def supported(packed: torch.Tensor, blocksize: int, shape: tuple[int, ...]) -> bool:
    """Whether these kernels take a layer: on CPU, blocks of a multiple of 16 values that tile whole rows."""
    return (packed.device.type == "cpu" and blocksize % 16 == 0 and 0 < blocksize <= MAX_BLOCK
            and len(shape) == 2 and shape[1] % blocksize == 0 and lib() is not None)


_scratch = threading.local()


def scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A per-thread buffer of at least ``numel`` elements, reused across calls.

    For a dequantized weight that lives only inside one forward (no autograd): writing into
    fresh memory each time costs a page fault per 4 KiB (for SmolLM2's MLP layers that nearly
    doubles the prefill time), while this buffer stays mapped. Its size is the largest layer seen.
    """
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def dequantize(packed: torch.Tensor, scales: torch.Tensor, blocksize: int, shape: tuple[int, ...],
               code: torch.Tensor, dtype: torch.dtype = torch.float32, library: ctypes.CDLL | None = None,
               reuse: bool = False) -> torch.Tensor:
    """W in ``dtype``: float32 products ``code * scale``, rounded to ``dtype`` (bit-identical to doing it in torch).

    ``reuse=True`` writes into this thread's :func:`scratch` buffer (float32 or bfloat16 only): the
    result is overwritten by the next call, so use it at once and never keep it (nor let autograd).
    """
    out_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    out = scratch(math.prod(shape), out_dtype).view(shape) if reuse and out_dtype == dtype else torch.empty(shape, dtype=out_dtype)
    code, scales, packed = code.float().contiguous(), scales.float().contiguous(), packed.contiguous()
    (library or lib()).qc_lut4_dequant(packed.data_ptr(), scales.data_ptr(), code.data_ptr(), out.numel(), blocksize,
                                       out.data_ptr(), int(out.dtype == torch.bfloat16), native.num_threads())
    return out.to(dtype)


def matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, blocksize: int, shape: tuple[int, ...],
           code: torch.Tensor, library: ctypes.CDLL | None = None) -> torch.Tensor:
    """``x @ W.T`` without materializing W: ``(m, K)`` -> float32 ``(m, N)``, ``m <= MAX_ROWS``.

    Accumulates in float32: each block's dot product, then times its scale.
    """
    n, k = shape
    x = x.float().contiguous()
    if x.shape[0] > MAX_ROWS:
        raise ValueError(f"lut4.matmul takes at most {MAX_ROWS} rows, got {x.shape[0]}; dequantize and multiply instead")
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    code, scales = code.float().contiguous(), scales.float().contiguous()
    (library or lib()).qc_lut4_gemm(x.data_ptr(), x.shape[0], k, packed.contiguous().data_ptr(), scales.data_ptr(),
                                    code.data_ptr(), n, blocksize, y.data_ptr(), native.num_threads())
    return y


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, library: ctypes.CDLL | None = None) -> torch.Tensor:
    """``x @ (weight * scales[:, None]).T`` for int8 ``weight (N, K)`` and float32 ``scales (N,)``:
    ``(m, K)`` -> float32 ``(m, N)``, ``m <= MAX_ROWS``, float32 accumulation. CPU only; check :func:`lib`."""
    x = x.float().contiguous()
    if x.shape[0] > MAX_ROWS:
        raise ValueError(f"lut4.int8_matmul takes at most {MAX_ROWS} rows, got {x.shape[0]}; dequantize and multiply instead")
    n, k = weight.shape
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    weight, scales = weight.contiguous(), scales.float().contiguous()
    (library or lib()).qc_int8_gemm(x.data_ptr(), x.shape[0], k, weight.data_ptr(), scales.data_ptr(), n, y.data_ptr(),
                                    native.num_threads())
    return y
