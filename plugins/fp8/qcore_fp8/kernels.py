"""Plain-torch FP8 kernels: block-wise quantization and dequantization (the reference of every other path).

Format (DeepSeek-V3, transformers' ``FP8Linear``, vLLM): a weight ``W`` of shape ``(N, K)`` is stored as

- ``weight``: ``float8_e4m3fn (N, K)``
- ``weight_scale_inv``: ``float32 (ceil(N / bn), ceil(K / bk))`` for blocks ``(bn, bk)``, or a scalar for
  one scale per tensor; ``ue8m0`` checkpoints store it as ``float8_e8m0fnu`` (powers of two)

with ``W[i, j] ≈ float(weight[i, j]) * weight_scale_inv[i // bn, j // bk]``. Edge blocks (when N or K is not
a multiple of the block) cover only the rows/columns that exist, and their scale comes from those alone.
"""

from __future__ import annotations

import functools
import math
import threading

import torch

from qcore.errors import NonFiniteWeightError
from qcore.fp8 import scale_in_place

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0


def scale_grid(shape: tuple[int, int], block_size: tuple[int, int] | None) -> tuple[int, ...]:
    """Shape of ``weight_scale_inv`` for a weight of ``shape``: ``(ceil(N/bn), ceil(K/bk))``, or ``()`` per tensor."""
    if block_size is None:
        return ()
    return (math.ceil(shape[0] / block_size[0]), math.ceil(shape[1] / block_size[1]))


def scales_to_float32(scale_inv: torch.Tensor) -> torch.Tensor:
    """``weight_scale_inv`` as float32, whatever its stored dtype (float, ``float8_e8m0fnu``, or raw e8m0 bytes)."""
    if scale_inv.dtype == torch.uint8:  # MXFP8 checkpoints store e8m0 exponents as bytes: 2 ** (byte - 127)
        return torch.pow(2.0, scale_inv.to(torch.float32) - 127.0)
    return scale_inv.to(torch.float32)


def _round_to_ue8m0(scale_inv: torch.Tensor) -> torch.Tensor:
    """float32 inverse scales -> the next power of two up, as ``float8_e8m0fnu`` (as transformers does)."""
    tiny = torch.finfo(torch.float32).tiny
    return torch.pow(2.0, torch.ceil(torch.log2(scale_inv.clamp(min=tiny)))).to(torch.float8_e8m0fnu)


def _quantize_with_amax(amax: torch.Tensor, ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales from block maxima: returns (forward scale, stored inverse), both shaped like ``amax``.

    An all-zero block gets scale 1 (its FP8 values are all +0 and dequantize to exact zeros).
    """
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    scale = FP8_MAX / safe
    scale = torch.where(amax > 0, scale, torch.ones_like(scale))
    inv = (1.0 / scale).to(torch.float32)
    if ue8m0:
        inv = _round_to_ue8m0(inv)
        scale = 1.0 / inv.to(torch.float32)
    return scale, inv


def _check_finite(chunk: torch.Tensor, name: str, first_row: int) -> None:
    finite = torch.isfinite(chunk)
    if not bool(finite.all()):
        row, col = (int(i) for i in (~finite).nonzero()[0])
        value = float(chunk[row, col])
        raise NonFiniteWeightError(
            f"{name} holds {value} at [{first_row + row}, {col}]: a NaN/Inf weight cannot be quantized to FP8. "
            "Fix or drop the checkpoint (it is corrupt or was saved after a diverged step)"
        )


def quantize_blockwise(weight: torch.Tensor, block_size: tuple[int, int] | None, scale_fmt: str = "float",
                       name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """float ``(N, K)`` -> ``float8_e4m3fn (N, K)`` and ``weight_scale_inv``.

    Per block: ``amax = max |W|``, ``scale = 448 / amax`` (float32), ``q = fp8(clamp(W * scale, ±448))``,
    ``weight_scale_inv = 1 / scale`` (float32 ``(ceil(N/bn), ceil(K/bk))``; ``float8_e8m0fnu`` rounded up to
    a power of two for ``scale_fmt="ue8m0"``; a scalar when ``block_size`` is None). The same operations, in
    the same order, as transformers' ``Fp8Quantize``, so the result is bit-identical where both apply.
    Works one row of blocks at a time: besides the FP8 result, at most ``bn x K`` float32 values are alive.

    :param name: the tensor's name, used in the error raised for NaN/Inf values.
    """
    rows, cols = weight.shape
    ue8m0 = scale_fmt == "ue8m0"
    q = torch.empty(rows, cols, dtype=FP8_DTYPE, device=weight.device)
    if block_size is None:
        w32 = weight.to(torch.float32)
        _check_finite(w32, name, 0)
        scale, inv = _quantize_with_amax(w32.abs().amax(), ue8m0)
        q.copy_(torch.clamp(w32 * scale, min=-FP8_MAX, max=FP8_MAX))
        return q, inv
    bn, bk = block_size
    grid = scale_grid((rows, cols), block_size)
    inv_all = torch.empty(grid, dtype=torch.float8_e8m0fnu if ue8m0 else torch.float32, device=weight.device)
    padded = torch.zeros(bn, grid[1] * bk, dtype=torch.float32, device=weight.device)  # edge blocks padded with 0
    for br in range(grid[0]):
        chunk = weight[br * bn:(br + 1) * bn]  # (h, K), h <= bn
        h = chunk.shape[0]
        padded[h:].zero_()
        padded[:h, :cols] = chunk
        _check_finite(padded[:h, :cols], name, br * bn)
        blocks = padded.view(bn, grid[1], bk)
        scale, inv_all[br] = _quantize_with_amax(blocks.abs().amax(dim=(0, 2)), ue8m0)  # zeros never raise amax
        scaled = blocks * scale[None, :, None]
        q[br * bn:br * bn + h] = torch.clamp(scaled.view(bn, -1)[:h, :cols], min=-FP8_MAX, max=FP8_MAX)
    return q, inv_all


def dequantize_blockwise(q: torch.Tensor, scale_inv: torch.Tensor, block_size: tuple[int, int] | None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``float8_e4m3fn (N, K)`` + scales -> ``dtype (N, K)``: ``float32(q) * float32(scale)``, rounded once to ``dtype``."""
    w32 = scale_in_place(q.to(torch.float32), scales_to_float32(scale_inv), block_size)
    return w32 if dtype == torch.float32 else w32.to(dtype)


@functools.cache
def _e4m3_values() -> torch.Tensor:
    """float32 (256,): the value of every float8_e4m3fn code (exact; the two NaN codes give NaN)."""
    return torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).to(torch.float32)


class ScratchWeights(threading.local):
    """Per-thread buffers the CPU path dequantizes into, reused by every layer (no allocation per forward).

    One float32 buffer (the exact product is formed in float32), one int32 buffer for the FP8 codes
    (CPU) and, for 16-bit compute, one buffer of that dtype; each grows to the largest layer seen. Only for inference: autograd would keep a
    reference to the weight, so the training path dequantizes into a fresh tensor.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = shape[0] * shape[1]
        buf = self.buffers.get((device, dtype))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[(device, dtype)] = buf
        return buf[:numel].view(shape)

    def clear(self) -> None:
        self.buffers.clear()


SCRATCH = ScratchWeights()


def dequantize_into_scratch(q: torch.Tensor, scale_inv: torch.Tensor, block_size: tuple[int, int] | None,
                            dtype: torch.dtype) -> torch.Tensor:
    """As :func:`dequantize_blockwise` (bit-identical), written into this thread's reused buffer.

    The returned tensor is overwritten by the next call on this thread: use it before then.
    """
    w32 = SCRATCH.get(tuple(q.shape), torch.float32, q.device)
    if q.device.type == "cpu":  # torch's CPU float8 -> float32 cast is scalar; a 256-entry table lookup is ~5x faster
        codes = SCRATCH.get(tuple(q.shape), torch.int32, q.device)
        codes.copy_(q.view(torch.uint8))
        torch.index_select(_e4m3_values(), 0, codes.view(-1), out=w32.view(-1))
    else:
        w32.copy_(q)
    scale_in_place(w32, scales_to_float32(scale_inv), block_size)
    if dtype == torch.float32:
        return w32
    out = SCRATCH.get(tuple(q.shape), dtype, q.device)
    return out.copy_(w32)
