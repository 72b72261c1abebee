"""hqq's bit packing (``hqq/core/bitpack.py``): codes are packed along dim 0 of the grouped layout.

For ``k`` codes per byte, the rows are cut into ``k`` equal slices and slice ``i`` goes to
bits ``(k-1-i)*bits`` of the byte: ``packed[r] = q[r] << 4 | q[r + R/2]`` for 4-bit. 3-bit
pads the rows to a multiple of 10 and packs 10 slices into an int32 (bits 27..0).
"""

from __future__ import annotations

import torch

PACKING_BY_NBITS = {8: "8bit_u8", 4: "4bit_u8", 3: "3bit_32", 2: "2bit_u8", 1: "1bit_u8"}
NBITS_BY_PACKING = {v: k for k, v in PACKING_BY_NBITS.items()}
# codes per packed element, and the packed element's dtype
CODES_PER_ELEMENT = {"8bit_u8": 1, "4bit_u8": 2, "3bit_32": 10, "2bit_u8": 4, "1bit_u8": 8}
PACKED_DTYPE = {"8bit_u8": torch.uint8, "4bit_u8": torch.uint8, "3bit_32": torch.int32, "2bit_u8": torch.uint8,
                "1bit_u8": torch.uint8}


def packed_rows(packing: str, rows: int) -> int:
    """Rows of the packed tensor for ``rows`` rows of codes."""
    per = CODES_PER_ELEMENT[packing]
    return -(-rows // per) if packing == "3bit_32" else rows // per


def pack(W_q: torch.Tensor, packing: str) -> torch.Tensor:
    """codes (R, C) (any dtype holding integers) -> packed (packed_rows(R), C), uint8 or int32 (3-bit)."""
    per, nbits = CODES_PER_ELEMENT[packing], NBITS_BY_PACKING[packing]
    if packing == "3bit_32":
        rows = packed_rows(packing, W_q.shape[0]) * per
        q = torch.zeros((rows, W_q.shape[1]), dtype=torch.int32, device=W_q.device)
        q[: W_q.shape[0]] = W_q.to(torch.int32)
    else:
        q = W_q.to(torch.uint8)
    step = q.shape[0] // per
    out = q[:step] << (nbits * (per - 1))
    for i in range(1, per):
        out = out | (q[i * step : (i + 1) * step] << (nbits * (per - 1 - i)))
    return out


def unpack(W_q: torch.Tensor, packing: str, rows: int | None = None, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """packed (P, C) -> codes (P * per, C) in ``dtype``; ``rows`` cuts the 3-bit padding off."""
    per, nbits = CODES_PER_ELEMENT[packing], NBITS_BY_PACKING[packing]
    step = W_q.shape[0]
    out = torch.empty((per * step, W_q.shape[1]), dtype=dtype, device=W_q.device)
    mask = (1 << nbits) - 1
    for i in range(per):
        out[i * step : (i + 1) * step] = (W_q >> (nbits * (per - 1 - i))) & mask
    return out if rows is None else out[:rows]
