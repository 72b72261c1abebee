"""bitsandbytes' quantization math in plain torch (no bitsandbytes import).

4-bit (QLoRA, https://arxiv.org/abs/2305.14314): the flattened weight is cut in blocks of
``blocksize`` values; each block is scaled by its absmax into [-1, 1] and every value is
replaced by the index of the nearest of 16 code values (NF4 or FP4). Indices are packed
two per byte, the first in the high nibble. Double quantization stores the float32
absmax values as 8-bit indices into the signed dynamic map, blockwise (256), after
subtracting their mean (the ``offset``).

LLM.int8 (https://arxiv.org/abs/2208.07339): weights are int8 per output row with scale
``SCB = absmax(row)``; activations are quantized per row at run time, and input columns
holding an outlier (|x| >= threshold) are computed in float.
"""

from __future__ import annotations

import functools
import math

import torch

from qcore.packing import pack_uint4_pairs, unpack_uint4_pairs

NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
# FP4 (e2m1 with bitsandbytes' bias), normalized by its largest magnitude, 12.
FP4_CODE = tuple(v / 12 for v in (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0))
# bitsandbytes' literal constants (1/127**2 and 1/127, as written there: the float32 rounding matters)
INT8_MM_DEQUANT = 6.200124e-05
INT8_ROW_DEQUANT = 7.874015718698502e-3


def code_4bit(quant_type: str) -> torch.Tensor:
    """The 16 float32 code values of ``nf4`` or ``fp4`` (the ``quant_map`` tensor of checkpoints)."""
    return torch.tensor(NF4_CODE if quant_type == "nf4" else FP4_CODE, dtype=torch.float32)


@functools.cache
def dynamic_map_signed() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic map (256 float32 values, sorted).

    7 exponent levels 10^-6 .. 10^0; level ``i`` holds the midpoints of ``2**i + 1``
    linearly spaced boundaries in [0.1, 1], with both signs; plus 0 and 1.0.
    """
    data: list[float] = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def _blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, int]:
    """Pad a 1-D tensor to whole blocks: ((blocks, blocksize), original length)."""
    n = flat.numel()
    pad = -n % blocksize
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(-1, blocksize), n


def quantize_4bit(weight: torch.Tensor, blocksize: int, quant_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax 4-bit quantization.

    :param weight: float tensor of any shape (flattened row-major).
    :returns: packed uint8 ``(ceil(n/2), 1)`` and float32 absmax ``(ceil(n/blocksize),)``.
    """
    blocks, n = _blocks(weight.reshape(-1).float(), blocksize)
    absmax = blocks.abs().amax(dim=1)
    # the last block may be partial: its padding zeros never raise the absmax
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1).reshape(-1)[: n + n % 2]
    code = code_4bit(quant_type)
    order = torch.argsort(code)
    midpoints = (code[order[:-1]] + code[order[1:]]) / 2
    index = order[torch.bucketize(scaled, midpoints)]  # nearest code value; ties to the upper one
    # an odd count is padded with the code of 0.0 (the padding value quantizes like a zero weight)
    return pack_uint4_pairs(index).unsqueeze(1), absmax


def dequantize_4bit_reference(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: tuple[int, ...],
                              code: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The plain definition: unpack nibbles, look up the code, scale by the block's absmax.

    :param packed: uint8 (or a storage dtype viewed as bytes), ``ceil(n/2)`` bytes.
    :param absmax: float32 ``(ceil(n/blocksize),)``; ``code``: float32 ``(16,)``.
    :returns: ``shape`` in ``dtype`` (computed in float32, then cast).
    """
    n = math.prod(shape)
    values = code.float()[unpack_uint4_pairs(packed.view(torch.uint8)).long()][:n]
    blocks, _ = _blocks(values, blocksize)
    return (blocks * absmax.float().unsqueeze(1)).reshape(-1)[:n].reshape(shape).to(dtype)


def byte_pair_table(code: torch.Tensor) -> torch.Tensor:
    """(256, 2) float32: the two code values of every byte (high nibble first)."""
    byte = torch.arange(256)
    return torch.stack([code.float()[byte >> 4], code.float()[byte & 0xF]], dim=1)


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: tuple[int, ...],
                    code: torch.Tensor, dtype: torch.dtype = torch.float32, table: torch.Tensor | None = None) -> torch.Tensor:
    """Fast CPU dequantize, bit-identical to :func:`dequantize_4bit_reference`.

    One gather per byte from a 256-entry table of value pairs (no nibble unpacking), then
    one broadcast multiply per block when blocks are whole (the usual case).
    """
    n = math.prod(shape)
    table = byte_pair_table(code) if table is None else table
    values = table[packed.view(torch.uint8).reshape(-1).long()].reshape(-1)
    if n % blocksize == 0 and values.numel() == n:
        return (values.view(-1, blocksize) * absmax.float().unsqueeze(1)).reshape(shape).to(dtype)
    blocks, _ = _blocks(values[:n], blocksize)
    return (blocks * absmax.float().unsqueeze(1)).reshape(-1)[:n].reshape(shape).to(dtype)


LUT_SIZE = 65536


@functools.cache
def dynamic_map_lookup() -> torch.Tensor:
    """Code index of the nearest dynamic-map value for each of ``LUT_SIZE`` points evenly spaced on [-1, 1].

    bitsandbytes' CPU kernel rounds through this table rather than to the exact nearest
    code value; using the same table makes the nested absmax bit-identical.
    """
    grid = torch.arange(LUT_SIZE, dtype=torch.float64) / (LUT_SIZE - 1) * 2 - 1
    code = dynamic_map_signed().double()
    return torch.bucketize(grid, (code[:-1] + code[1:]) / 2).to(torch.uint8)


def quantize_blockwise_8bit(values: torch.Tensor, blocksize: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization against the signed dynamic map (used for nested absmax).

    :param values: float32 1-D.
    :returns: uint8 indices (same length) and float32 absmax per block.
    """
    blocks, n = _blocks(values.reshape(-1).float(), blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1).reshape(-1)[:n]
    slot = (((scaled + 1.0) * 0.5) * (LUT_SIZE - 1) + 0.5).to(torch.int64)  # truncation, as the C kernel
    return dynamic_map_lookup()[slot], absmax


def dequantize_blockwise_8bit(index: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    """uint8 indices -> float32 values (code[index] * absmax of their block)."""
    blocks, n = _blocks(code.float()[index.long().reshape(-1)], blocksize)
    return (blocks * absmax.float().unsqueeze(1)).reshape(-1)[:n]


def int8_rowwise_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8 weight quantization, computed from the float16 weight as bitsandbytes does.

    :param weight: float ``(out, in)``.
    :returns: int8 ``(out, in)`` and float32 ``SCB (out,)``.
    """
    half = weight.to(torch.float16)
    scb = half.abs().amax(dim=1).float()
    q = torch.round(half * (127.0 / scb.unsqueeze(1))).to(torch.int8)
    return q, scb


def int8_dequantize(q: torch.Tensor, scb: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 ``(out, in)`` + SCB ``(out,)`` -> float weight."""
    return (q * scb.float().view(-1, 1) * INT8_ROW_DEQUANT).to(dtype)


def int8_matmul_exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 ``(m, k)`` @ int8 ``(n, k)``.T, summed exactly; returns float32 ``(m, n)``.

    torch's int8 GEMM (int32 accumulation) where the device has one; float64 otherwise
    (exact: |sum| <= 127**2 * k is far below 2**53).
    """
    if a.device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX512" or a.device.type == "cuda":
        try:
            return torch._int_mm(a, b.t()).float()
        except RuntimeError:  # shape or platform constraints: fall through to the exact float path
            pass
    return torch.matmul(a.double(), b.double().t()).float()


def int8_mixed_matmul(x: torch.Tensor, q: torch.Tensor, scb: torch.Tensor, threshold: float,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """LLM.int8 inference: ``x @ W.T`` with int8 activations and outlier columns in float.

    :param x: float ``(..., in)``.
    :param q: int8 weight ``(out, in)``; ``scb``: float32 ``(out,)``.
    :param threshold: activations with ``|x| >= threshold`` mark their column as outlier; 0 disables.
    :returns: ``(..., out)`` in x's dtype.
    """
    shape, dtype = x.shape, x.dtype
    a = x.reshape(-1, shape[-1]).to(torch.float16)
    outlier_cols = None
    if threshold > 0:
        outliers = a.abs() >= threshold
        if outliers.any():
            outlier_cols = outliers.any(dim=0).nonzero().view(-1)
            a = a.masked_fill(outliers, 0)
    row_stats = a.abs().amax(dim=1).float()
    a_q = torch.round(a * (127.0 / row_stats.unsqueeze(1))).to(torch.int8)
    if outlier_cols is not None and a_q.shape[0] > 1:
        a_q[:, outlier_cols] = 0
    acc = int8_matmul_exact(a_q, q)
    out = acc * (row_stats.unsqueeze(1) * scb.float().unsqueeze(0)) * INT8_MM_DEQUANT
    if bias is not None:
        out = out + bias
    out = out.to(dtype)
    if outlier_cols is not None:
        sub_w = int8_dequantize(q[:, outlier_cols], scb, dtype)
        out = out.addmm(x.reshape(-1, shape[-1])[:, outlier_cols].to(dtype), sub_w.t())
    return out.reshape(*shape[:-1], q.shape[0])
