"""The Python side of the shared 4-bit lookup kernels (``qcore/include/qcore/lut4.h``): checked calls and torch ops.

qcore compiles nothing: a plugin builds ``lut4.h`` into its own binary at install (:mod:`qcore.build`,
``QC_LUT4_EXPORTS(prefix)``) and calls :func:`register_ops` once, which defines, under the plugin's
torch.library namespace (e.g. ``torch.ops.qcore_bnb``; architecture in docs/kernels.md):

- ``lut4_gemm(x, packed, absmax, code, n, k, blocksize) -> y``: ``x (m, k)`` float32 @ ``W.T`` ->
  float32 ``(m, n)``, ``m <= MAX_ROWS``, W never materialized (decoding).
- ``lut4_gemm_affine(x, packed, absmax, code, szeros, n, k, blocksize) -> y``: the affine form
  ``W = s * (q - z)`` in one call: ``lut4_gemm`` minus, per block, float32 ``szeros`` (``s * z``,
  ``(n*k/blocksize,)`` like ``absmax``) times the block's sum of x.
- ``lut4_dequantize(packed, absmax, code, n, k, blocksize, out) -> ()``: writes W ``(n, k)`` into ``out``
  (float32 or bfloat16; float32 products rounded once, bit-identical to the torch definition).
- ``lut4_gemm_q8(x, packed, absmax, code_i8, code_scale_inv, n, k, blocksize) -> y``: the same product with
  x quantized to int8 per 64 values and integer dot products (``lut4_q8.h``, AVX-512 VNNI / AVX2);
  approximate, opt-in (:func:`int8_activations_default`), ``blocksize % 64 == 0``, ``m <= Q8_MAX_ROWS``.
- ``int8_gemm(x, weight, scales) -> y``: ``x (m, k)`` float32 @ ``(weight * scales[:, None]).T``,
  int8 ``weight (n, k)``, float32 ``scales (n,)`` -> float32 ``(m, n)``.
- ``f32_gemm(x, weight) -> y``: ``x (m, k)`` float32 @ ``weight.T``, float32 ``weight (n, k)``: a layer left
  unquantized (the output head), where torch's float32 GEMV reads W at a third of the memory bandwidth
  (:class:`qcore.int4.FloatDecodeLinear`).

The layout: W ``(n, k)`` flattened row-major, element ``i`` is nibble ``i`` of ``packed`` (uint8
``(n*k/2,)``, byte ``i // 2``, high nibble first), an index into the float32 ``code (16,)``, scaled by
float32 ``absmax[i // blocksize]`` (``(n*k/blocksize,)``). bitsandbytes' NF4/FP4 is exactly this; an
affine int4 format ``s * (q - z)`` is this with ``code = 0..15`` and the zero-point term subtracted
(``lut4_gemm_affine`` does both in the kernel).

Every op checks device, dtype, contiguity and every buffer's size against ``n``, ``k`` and
``blocksize`` before a pointer reaches C (:class:`qcore.native.KernelArgumentError` otherwise), and
has a fake implementation, so meta tensors, ``torch.compile`` and ``torch.export`` see it. Without the
plugin's binary the same ops run in torch: the GEMM through a 256-entry table of byte -> value pairs,
a few hundred rows at a time into a reused buffer (about 2x float32 decode), int8 through
``torch.ops.aten._weight_int8pack_mm``, float32 through ``torch.nn.functional.linear``.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Callable

import torch

from qcore import native
from qcore.native import check, check_tensor

MAX_BLOCK = 4096
MAX_ROWS = 64
ISA_NAMES = ("portable", "avx2", "avx512", "avx512vnni")
Q8_BLOCK = 64  # activations are quantized to int8 per this many values (lut4_q8.h)
Q8_MAX_ROWS = 8
_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
FALLBACK_CHUNK = 1 << 19  # weights decoded per step by the torch GEMM (2 MiB of float32: stays in cache)


def signatures(prefix: str) -> dict[str, tuple]:
    """ctypes signatures of the functions ``QC_LUT4_EXPORTS(prefix)`` defines."""
    return {
        f"{prefix}_lut4_dequant": (None, _P, _P, _P, _I64, _I64, _P, _I32, _I32),
        f"{prefix}_lut4_gemm": (None, _P, _I64, _I64, _P, _P, _P, _I64, _I64, _P, _I32),
        f"{prefix}_lut4_gemm_affine": (_I32, _P, _I64, _I64, _P, _P, _P, _P, _I64, _I64, _P, _I32),
        f"{prefix}_int8_gemm": (None, _P, _I64, _I64, _P, _P, _I64, _P, _I32),
        f"{prefix}_f32_gemm": (None, _P, _I64, _I64, _P, _I64, _P, _I32),
        f"{prefix}_lut4_gemm_q8": (_I32, _P, _I64, _I64, _P, _P, _P, ctypes.c_float, _I64, _I64, _P, _I32),
        f"{prefix}_q8_isa": (_I32,),
        f"{prefix}_isa": (_I32,),
        f"{prefix}_cpu_isa": (_I32,),
        f"{prefix}_set_isa_cap": (None, _I32),
    }


def supported(blocksize: int, n: int, k: int) -> bool:
    """Whether the lookup kernels take a weight (n, k) in blocks of ``blocksize``: blocks of a multiple
    of 16 values, at most MAX_BLOCK, that tile whole rows."""
    return blocksize % 16 == 0 and 0 < blocksize <= MAX_BLOCK and n > 0 and k > 0 and k % blocksize == 0


def int8_activations_default() -> bool:
    """Whether 4-bit layers decode through the int8-activation path (``lut4_gemm_q8``) by default:
    ``QCORE_INT8_ACTIVATIONS=1``. Off by default: the float32 path is exact up to float32 rounding and
    reproducible bit for bit across SIMD variants; the int8 path is faster and approximate (bounded error)."""
    return os.environ.get("QCORE_INT8_ACTIVATIONS", "0").strip().lower() in ("1", "true", "yes", "on")


def supported_q8(blocksize: int, n: int, k: int) -> bool:
    """Whether the int8-activation GEMM (``lut4_gemm_q8``) takes the weight: blocks of a multiple of 64."""
    return supported(blocksize, n, k) and blocksize % Q8_BLOCK == 0


def int8_code(code: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The 16 code values as int8 and the factor back: ``code ~= code_i8 * scale_inv``.

    Exact for integer codes within [-127, 127] (GPTQ's 0..15: scale_inv 1); otherwise
    ``round(127 * c / max|c|)`` (NF4/FP4: an error of at most ``max|c| / 254`` per code value).
    """
    c = code.double().cpu()
    if torch.equal(c, c.round()) and c.abs().max() <= 127:
        return c.to(torch.int8), 1.0
    top = float(c.abs().max()) or 1.0
    return torch.round(c * (127 / top)).to(torch.int8), top / 127


def quantize_rows_q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation quantization of ``lut4_gemm_q8`` in torch: x (m, k) -> int8 (m, k), scales (m, k / 64)."""
    xb = x.float().view(x.shape[0], -1, Q8_BLOCK)
    amax = xb.abs().amax(-1)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q.view_as(x), amax / 127


def _check_layout(op: str, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int,
                  blocksize: int) -> None:
    if not supported(blocksize, n, k):  # (messages are built only on failure: these checks run per layer per token)
        check(op, False, f"a ({n}, {k}) weight in blocks of {blocksize} is not supported: blocks "
              f"must be a multiple of 16 values, at most {MAX_BLOCK}, and tile whole rows of k={k}")
    check_tensor(op, "packed", packed, torch.uint8, (n * k // 2,))
    check_tensor(op, "absmax", absmax, torch.float32, (n * k // blocksize,))
    check_tensor(op, "code", code, torch.float32, (16,))


def _check_rows(op: str, x: object, limit: int, hint: str = "; dequantize and multiply") -> None:
    """x is a 2-D tensor of at most ``limit`` rows (its dtype, shape and layout are check_tensor's)."""
    if not (isinstance(x, torch.Tensor) and x.dim() == 2):
        check(op, False, "x must be a 2-D tensor (m, k)")
    if x.shape[0] > limit:
        check(op, False, f"takes at most {limit} rows, got {x.shape[0]}{hint}")


def _check_fake(op: str, tensors: dict[str, tuple[torch.Tensor, torch.dtype, tuple[int, ...]]]) -> None:
    """The fake implementations' checks: dtype, shape and one device for all (meta and fake tensors have no data)."""
    devices = {t.device for t, _, _ in tensors.values()}
    check(op, len(devices) == 1, f"tensors on different devices: {sorted(map(str, devices))}")
    for name, (t, dtype, shape) in tensors.items():
        dtypes = (dtype,) if isinstance(dtype, torch.dtype) else dtype
        check(op, t.dtype in dtypes and tuple(t.shape) == tuple(shape),
              f"{name} is {t.dtype} {list(t.shape)}, expected {dtypes[0]} {list(shape)}")


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


def byte_pair_table(code: torch.Tensor) -> torch.Tensor:
    """float32 (256, 2): the two code values of every byte (high nibble first)."""
    byte = torch.arange(256, device=code.device)
    return torch.stack([code.float()[byte >> 4], code.float()[byte & 0xF]], dim=1).contiguous()


def torch_dequantize(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int, blocksize: int,
                     out: torch.Tensor) -> torch.Tensor:
    """W (n, k) into ``out`` in torch: one gather per byte from the pair table, one multiply per block."""
    pairs = byte_pair_table(code).view(torch.float64).view(256)  # a pair of float32 as one 8-byte value
    w = torch.empty(n * k // 2, dtype=torch.float64) if out.dtype != torch.float32 else out.view(-1).view(torch.float64)
    torch.index_select(pairs, 0, packed.to(torch.int32), out=w)
    values = w.view(torch.float32).view(-1, blocksize).mul_(absmax.unsqueeze(1))
    if values.data_ptr() != out.data_ptr():
        out.copy_(values.view(n, k))
    return out


def torch_gemm(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int,
               blocksize: int) -> torch.Tensor:
    """``x @ W.T`` in torch, a few hundred rows of W at a time decoded into a reused, cache-sized buffer."""
    pairs = byte_pair_table(code).view(torch.float64).view(256)
    rows = max(1, min(n, FALLBACK_CHUNK // k))
    index = scratch(rows * k // 2, torch.int32)
    w = torch.empty(rows * k // 2, dtype=torch.float64)
    y = torch.empty(x.shape[0], n, dtype=torch.float32)
    per_row = k // blocksize
    for r in range(0, n, rows):
        take = min(rows, n - r)
        idx = index[: take * k // 2]
        idx.copy_(packed[r * k // 2:(r + take) * k // 2])
        wv = w[: take * k // 2]
        torch.index_select(pairs, 0, idx, out=wv)
        block = wv.view(torch.float32).view(take * per_row, blocksize)
        block.mul_(absmax[r * per_row:(r + take) * per_row].unsqueeze(1))
        torch.mm(x, block.view(take, k).T, out=y[:, r:r + take]) if x.shape[0] > 1 else \
            torch.mv(block.view(take, k), x[0], out=y[0, r:r + take])
    return y


def register_ops(namespace: str, prefix: str, library: Callable[[], ctypes.CDLL | None]) -> dict[str, Callable]:
    """Define ``lut4_gemm``, ``lut4_gemm_affine``, ``lut4_gemm_q8``, ``lut4_dequantize``, ``int8_gemm`` and
    ``f32_gemm`` under ``torch.ops.<namespace>``.

    :param namespace: the plugin's torch.library namespace, e.g. ``"qcore_bnb"``.
    :param prefix: the ``QC_LUT4_EXPORTS`` prefix its binary was built with, e.g. ``"qcbnb"``.
    :param library: returns the loaded binary (:func:`qcore.native.load_library`) or None (torch paths).
    :returns: the checked Python implementations by name (what the ops run), for callers that want to
        skip the dispatcher's overhead on a hot path, and ``"bind"``: ``bind(op_name, *weight_args)``
        returns a call of x alone whose weight arguments were checked once (decoding calls it per token).
    """

    c_lut4_gemm, c_lut4_gemm_affine, c_lut4_gemm_q8, c_lut4_dequant, c_int8_gemm, c_f32_gemm = (
        f"{prefix}_{name}" for name in ("lut4_gemm", "lut4_gemm_affine", "lut4_gemm_q8", "lut4_dequant", "int8_gemm",
                                        "f32_gemm"))

    def lut4_gemm(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int,
                  blocksize: int) -> torch.Tensor:
        op = f"{namespace}.lut4_gemm"
        _check_layout(op, packed, absmax, code, n, k, blocksize)
        _check_rows(op, x, MAX_ROWS)
        check_tensor(op, "x", x, torch.float32, (x.shape[0], k))
        lib = library()
        if x.shape[0] == 0:
            return torch.empty(0, n, dtype=torch.float32)
        if lib is None:
            return torch_gemm(x, packed, absmax, code, n, k, blocksize)
        y = torch.empty(x.shape[0], n, dtype=torch.float32)
        getattr(lib, c_lut4_gemm)(x.data_ptr(), x.shape[0], k, packed.data_ptr(), absmax.data_ptr(),
                                  code.data_ptr(), n, blocksize, y.data_ptr(), native.num_threads())
        return y

    # the C calls of the two decode ops, on pointers already checked (by the op, or once by bind): x holds
    # `rows` rows of k contiguous float32 values; y is made in `shape` (x's leading dims, n)
    def c_affine(lib: ctypes.CDLL, x: torch.Tensor, rows: int, k: int, packed_p: int, absmax_p: int, code_p: int,
                 szeros_p: int, n: int, blocksize: int, shape: tuple[int, ...]) -> torch.Tensor:
        y = torch.empty(shape, dtype=torch.float32)
        if getattr(lib, c_lut4_gemm_affine)(x.data_ptr(), rows, k, packed_p, absmax_p, code_p, szeros_p, n,
                                            blocksize, y.data_ptr(), native.num_threads()):
            raise MemoryError(f"{namespace}.lut4_gemm_affine: could not allocate {4 * rows * k // blocksize} "
                              "bytes for the block sums of x")
        return y

    def c_int8(lib: ctypes.CDLL, x: torch.Tensor, rows: int, k: int, weight_p: int, scales_p: int, n: int,
               shape: tuple[int, ...]) -> torch.Tensor:
        y = torch.empty(shape, dtype=torch.float32)
        getattr(lib, c_int8_gemm)(x.data_ptr(), rows, k, weight_p, scales_p, n, y.data_ptr(), native.num_threads())
        return y

    def lut4_gemm_affine(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                         szeros: torch.Tensor, n: int, k: int, blocksize: int) -> torch.Tensor:
        op = f"{namespace}.lut4_gemm_affine"
        _check_layout(op, packed, absmax, code, n, k, blocksize)
        check_tensor(op, "szeros", szeros, torch.float32, (n * k // blocksize,))
        _check_rows(op, x, MAX_ROWS)
        check_tensor(op, "x", x, torch.float32, (x.shape[0], k))
        lib = library()
        if x.shape[0] == 0:
            return torch.empty(0, n, dtype=torch.float32)
        if lib is None:
            y = torch_gemm(x, packed, absmax, code, n, k, blocksize)
            return y.addmm(x.view(x.shape[0], -1, blocksize).sum(-1), szeros.view(n, -1).T, alpha=-1)
        return c_affine(lib, x, x.shape[0], k, packed.data_ptr(), absmax.data_ptr(), code.data_ptr(), szeros.data_ptr(), n,
                        blocksize, (x.shape[0], n))

    def lut4_gemm_affine_fake(x, packed, absmax, code, szeros, n, k, blocksize):
        op = f"{namespace}.lut4_gemm_affine"
        check(op, supported(blocksize, n, k) and x.dim() == 2 and x.shape[0] <= MAX_ROWS, "unsupported shape")
        _check_fake(op, {"x": (x, torch.float32, (x.shape[0], k)), "packed": (packed, torch.uint8, (n * k // 2,)),
                         "absmax": (absmax, torch.float32, (n * k // blocksize,)), "code": (code, torch.float32, (16,)),
                         "szeros": (szeros, torch.float32, (n * k // blocksize,))})
        return x.new_empty(x.shape[0], n)

    def lut4_gemm_fake(x, packed, absmax, code, n, k, blocksize):
        op = f"{namespace}.lut4_gemm"
        check(op, supported(blocksize, n, k) and x.dim() == 2 and x.shape[0] <= MAX_ROWS, "unsupported shape")
        _check_fake(op, {"x": (x, torch.float32, (x.shape[0], k)), "packed": (packed, torch.uint8, (n * k // 2,)),
                         "absmax": (absmax, torch.float32, (n * k // blocksize,)), "code": (code, torch.float32, (16,))})
        return x.new_empty(x.shape[0], n)

    def lut4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int, blocksize: int,
                        out: torch.Tensor) -> None:
        op = f"{namespace}.lut4_dequantize"
        _check_layout(op, packed, absmax, code, n, k, blocksize)
        check_tensor(op, "out", out, (torch.float32, torch.bfloat16), (n, k))
        lib = library()
        if lib is None:
            torch_dequantize(packed, absmax, code, n, k, blocksize, out)
            return
        getattr(lib, c_lut4_dequant)(packed.data_ptr(), absmax.data_ptr(), code.data_ptr(), n * k, blocksize,
                                     out.data_ptr(), int(out.dtype == torch.bfloat16), native.num_threads())

    def lut4_dequantize_fake(packed, absmax, code, n, k, blocksize, out):
        op = f"{namespace}.lut4_dequantize"
        check(op, supported(blocksize, n, k), "unsupported shape")
        _check_fake(op, {"packed": (packed, torch.uint8, (n * k // 2,)), "absmax": (absmax, torch.float32, (n * k // blocksize,)),
                         "code": (code, torch.float32, (16,)), "out": (out, (torch.float32, torch.bfloat16), (n, k))})

    def int8_gemm(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        op = f"{namespace}.int8_gemm"
        check(op, isinstance(weight, torch.Tensor) and weight.dim() == 2, "weight must be a 2-D int8 tensor (n, k)")
        n, k = weight.shape
        _check_rows(op, x, MAX_ROWS)
        check_tensor(op, "x", x, torch.float32, (x.shape[0], k))
        check_tensor(op, "weight", weight, torch.int8, (n, k))
        check_tensor(op, "scales", scales, torch.float32, (n,))
        lib = library()
        if lib is None or x.shape[0] == 0:
            return torch.ops.aten._weight_int8pack_mm(x, weight, scales) if x.shape[0] else x.new_empty(0, n)
        return c_int8(lib, x, x.shape[0], k, weight.data_ptr(), scales.data_ptr(), n, (x.shape[0], n))

    def int8_gemm_fake(x, weight, scales):
        op = f"{namespace}.int8_gemm"
        check(op, weight.dim() == 2 and x.dim() == 2 and x.shape[0] <= MAX_ROWS, "unsupported shape")
        n, k = weight.shape
        _check_fake(op, {"x": (x, torch.float32, (x.shape[0], k)), "weight": (weight, torch.int8, (n, k)),
                         "scales": (scales, torch.float32, (n,))})
        return x.new_empty(x.shape[0], n)

    def f32_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        op = f"{namespace}.f32_gemm"
        check(op, isinstance(weight, torch.Tensor) and weight.dim() == 2, "weight must be a 2-D float32 tensor (n, k)")
        n, k = weight.shape
        _check_rows(op, x, MAX_ROWS, hint="; use torch.nn.functional.linear")
        check_tensor(op, "x", x, torch.float32, (x.shape[0], k))
        check_tensor(op, "weight", weight, torch.float32, (n, k))
        lib = library()
        if lib is None or x.shape[0] == 0 or n == 0:
            return torch.nn.functional.linear(x, weight)
        y = torch.empty(x.shape[0], n, dtype=torch.float32)
        getattr(lib, c_f32_gemm)(x.data_ptr(), x.shape[0], k, weight.data_ptr(), n, y.data_ptr(), native.num_threads())
        return y

    def f32_gemm_fake(x, weight):
        op = f"{namespace}.f32_gemm"
        check(op, weight.dim() == 2 and x.dim() == 2 and x.shape[0] <= MAX_ROWS, "unsupported shape")
        n, k = weight.shape
        _check_fake(op, {"x": (x, torch.float32, (x.shape[0], k)), "weight": (weight, torch.float32, (n, k))})
        return x.new_empty(x.shape[0], n)

    def lut4_gemm_q8(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code_i8: torch.Tensor,
                     code_scale_inv: float, n: int, k: int, blocksize: int) -> torch.Tensor:
        op = f"{namespace}.lut4_gemm_q8"
        if not supported_q8(blocksize, n, k):
            check(op, False, f"a ({n}, {k}) weight in blocks of {blocksize} is not supported: blocks "
                  f"must be a multiple of {Q8_BLOCK} values, at most {MAX_BLOCK}, and tile whole rows of k={k}")
        check_tensor(op, "packed", packed, torch.uint8, (n * k // 2,))
        check_tensor(op, "absmax", absmax, torch.float32, (n * k // blocksize,))
        check_tensor(op, "code_i8", code_i8, torch.int8, (16,))
        _check_rows(op, x, Q8_MAX_ROWS, hint="")
        check_tensor(op, "x", x, torch.float32, (x.shape[0], k))
        check(op, math.isfinite(code_scale_inv), "code_scale_inv must be finite")
        lib = library()
        if x.shape[0] == 0:
            return torch.empty(0, n, dtype=torch.float32)
        if lib is None:  # the same math in torch: x through int8, the code through int8
            q, dx = quantize_rows_q8(x)
            xd = (q.float().view(x.shape[0], -1, Q8_BLOCK) * dx.unsqueeze(-1)).view_as(x).contiguous()
            return torch_gemm(xd, packed, absmax, code_i8.float() * code_scale_inv, n, k, blocksize)
        y = torch.empty(x.shape[0], n, dtype=torch.float32)
        status = getattr(lib, c_lut4_gemm_q8)(x.data_ptr(), x.shape[0], k, packed.data_ptr(), absmax.data_ptr(),
                                              code_i8.data_ptr(), code_scale_inv, n, blocksize, y.data_ptr(),
                                              native.num_threads())
        if status != 0:
            raise MemoryError(f"{op}: could not allocate {x.shape[0] * k} bytes for the quantized activations")
        return y

    def lut4_gemm_q8_fake(x, packed, absmax, code_i8, code_scale_inv, n, k, blocksize):
        op = f"{namespace}.lut4_gemm_q8"
        check(op, supported_q8(blocksize, n, k) and x.dim() == 2 and x.shape[0] <= Q8_MAX_ROWS, "unsupported shape")
        _check_fake(op, {"x": (x, torch.float32, (x.shape[0], k)), "packed": (packed, torch.uint8, (n * k // 2,)),
                         "absmax": (absmax, torch.float32, (n * k // blocksize,)), "code_i8": (code_i8, torch.int8, (16,))})
        return x.new_empty(x.shape[0], n)

    def bind(name: str, *weights_and_shape: object) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> name(x, *weights_and_shape)`` with the weight arguments checked once, here, for the decode hot
        path (``lut4_gemm_affine`` or ``int8_gemm``). The bound call takes x ``(..., k)`` with any leading dims
        (at most MAX_ROWS rows in all) and returns ``(..., n)``. Each call still checks x in full (a
        contiguous float32 CPU tensor within its storage), and that every weight tensor still has the data
        pointer it was checked with, else :class:`qcore.native.KernelArgumentError`. The bound call holds the
        weights' storages, so memory it was checked with cannot be freed or reallocated while the pointers
        stay the same: bind again after replacing a weight."""
        impl = {"lut4_gemm_affine": lut4_gemm_affine, "int8_gemm": int8_gemm}[name]
        op = f"{namespace}.{name}"
        if name == "int8_gemm":
            weight, scales = weights_and_shape
            n, k = weight.shape
            tensors = (weight, scales)
        else:
            packed, absmax, code, szeros, n, k, blocksize = weights_and_shape
            tensors = (packed, absmax, code, szeros)
        impl(torch.zeros(1, k), *weights_and_shape)  # the full checks of the op, once
        pointers = [t.data_ptr() for t in tensors]
        storages = [t.untyped_storage() for t in tensors]  # held: their memory stays allocated while bound
        float32 = torch.float32

        def call(x: torch.Tensor) -> torch.Tensor:
            # the common case in the cheapest calls (this runs per layer per token), the full checks otherwise
            if not (type(x) is torch.Tensor and x.dtype is float32 and x.is_cpu and x.dim() > 0 and x.shape[-1] == k
                    and 0 < x.numel() <= MAX_ROWS * k and x.is_contiguous()
                    and x.untyped_storage().nbytes() >= (x.storage_offset() + x.numel()) * 4):
                x2 = x.reshape(-1, x.shape[-1]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x
                _check_rows(op, x2, MAX_ROWS)
                check_tensor(op, "x", x2, float32, (x2.shape[0], k))
                return impl(x2, *weights_and_shape).view(x.shape[:-1] + (n,))  # no rows, or a subclass
            for t, pointer in zip(tensors, pointers, strict=True):
                if t.data_ptr() != pointer:
                    check(op, False, "a bound weight tensor was replaced or resized since it was bound; bind again")
            lib = library()
            if lib is None:
                return impl(x.view(-1, k), *weights_and_shape).view(x.shape[:-1] + (n,))
            if name == "int8_gemm":
                return c_int8(lib, x, x.numel() // k, k, *pointers, n, x.shape[:-1] + (n,))
            return c_affine(lib, x, x.numel() // k, k, *pointers, n, blocksize, x.shape[:-1] + (n,))

        call.storages = storages  # (kept alive with the call)
        return call

    ops: dict[str, Callable] = {"bind": bind}
    for name, impl, fake, mutates in (("lut4_gemm", lut4_gemm, lut4_gemm_fake, ()),
                                      ("lut4_gemm_affine", lut4_gemm_affine, lut4_gemm_affine_fake, ()),
                                      ("lut4_gemm_q8", lut4_gemm_q8, lut4_gemm_q8_fake, ()),
                                      ("lut4_dequantize", lut4_dequantize, lut4_dequantize_fake, ("out",)),
                                      ("int8_gemm", int8_gemm, int8_gemm_fake, ()),
                                      ("f32_gemm", f32_gemm, f32_gemm_fake, ())):
        custom = torch.library.custom_op(f"{namespace}::{name}", impl, mutates_args=mutates)
        custom.register_fake(fake)
        ops[name] = impl
    return ops


