"""Bit packing shared by plugins.

Two layouts cover the ecosystem's formats:

- *int32 bit streams* (GPTQ, AWQ): ``bits``-wide unsigned values laid end to end,
  least significant bits first, in int32 words along one dimension. Value ``i`` of a
  row starts at bit ``i * bits`` of the stream, so for bits 2/4/8 word ``w`` holds
  values ``w*pf .. w*pf+pf-1`` (``pf = 32 // bits``) at shifts ``0, bits, 2*bits...``;
  for bits 3 values straddle words (32 values in 3 words), as GPTQ packs them.
- *uint8 nibble pairs* (bitsandbytes 4-bit): two 4-bit values per byte, the first in
  the high nibble.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def packed_length(n: int, bits: int) -> int:
    """Number of int32 words that hold ``n`` values of ``bits`` bits (n*bits must be a multiple of 32)."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if (n * bits) % 32:
        raise ValueError(f"{n} values of {bits} bits do not fill whole int32 words")
    return n * bits // 32


def pack_int32(values: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Pack unsigned ``bits``-wide integers into an int32 bit stream along ``dim``.

    :param values: integer tensor, every value in ``[0, 2**bits)``; size ``n`` along ``dim``.
    :returns: int32 tensor with size ``n * bits // 32`` along ``dim``.
    """
    values = values.movedim(dim, -1)
    n = values.shape[-1]
    words = packed_length(n, bits)
    v = values.to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ValueError(f"values out of range for {bits}-bit packing")
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = torch.arange(per_word, dtype=torch.int64) * bits
        packed = (v.reshape(*v.shape[:-1], words, per_word) << shifts).sum(-1)
    else:
        offset = torch.arange(n, dtype=torch.int64) * bits
        word, shift = offset // 32, offset % 32
        packed = torch.zeros(*v.shape[:-1], words + 1, dtype=torch.int64)
        low = (v << shift) & 0xFFFFFFFF
        high = v >> (32 - shift)  # the bits that spill into the next word (0 when none)
        packed.index_add_(-1, word, low)
        packed.index_add_(-1, word + 1, high)
        packed = packed[..., :words]
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed)
    return packed.to(torch.int32).movedim(-1, dim).contiguous()


def unpack_int32(packed: torch.Tensor, bits: int, n: int | None = None, dim: int = -1) -> torch.Tensor:
    """Inverse of :func:`pack_int32`.

    :param packed: int32 tensor; ``w`` words along ``dim``.
    :param n: number of values to return along ``dim`` (default ``w * 32 // bits``).
    :returns: uint8 tensor (int16 never needed: bits <= 8) of the values, ``n`` along ``dim``.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    p = packed.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    words = p.shape[-1]
    total = words * 32 // bits
    n = total if n is None else n
    mask = (1 << bits) - 1
    if 32 % bits == 0:
        shifts = torch.arange(32 // bits, dtype=torch.int64) * bits
        values = ((p.unsqueeze(-1) >> shifts) & mask).reshape(*p.shape[:-1], total)
    else:
        offset = torch.arange(total, dtype=torch.int64) * bits
        word, shift = offset // 32, offset % 32
        padded = torch.cat([p, torch.zeros_like(p[..., :1])], dim=-1)
        low = padded.index_select(-1, word) >> shift
        high = padded.index_select(-1, word + 1) << (32 - shift)
        values = (low | high) & mask
    return values[..., :n].to(torch.uint8).movedim(-1, dim).contiguous()


def pack_uint4_pairs(values: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values two per byte, the first of each pair in the high nibble.

    :param values: integer tensor of even numel, values in ``[0, 16)`` (flattened).
    :returns: uint8 tensor of shape ``(numel // 2,)``.
    """
    flat = values.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        raise ValueError("pack_uint4_pairs needs an even number of values")
    return (flat[0::2] << 4) | (flat[1::2] & 0xF)


def unpack_uint4_pairs(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_uint4_pairs`: uint8 ``(m,)`` -> uint8 ``(2m,)`` values in ``[0, 16)``."""
    flat = packed.reshape(-1).to(torch.uint8)
    return torch.stack([flat >> 4, flat & 0xF], dim=-1).reshape(-1)
