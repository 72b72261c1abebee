"""AWQ matmul kernels: the plain-torch reference and the fast CPU path.

- reference: ``W = scales * (q - zeros)`` per group (float32), then ``F.linear``.
- CPU: torch's packed int4 GEMM (``aten._weight_int4pack_mm_for_cpu``), which computes
  ``x @ ((q - 8) * scale + zero)`` per group; AWQ's ``scale * (q - z)`` maps onto it with
  ``zero = scale * (8 - z)``. The packed codes are the layer's only resident copy of its weights:
  the checkpoint's codes are read back from it exactly (:meth:`Int4CpuWeight.codes`).
"""

from __future__ import annotations

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)


def dequantize(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: codes (in, out) uint8, zeros (G, out), scales (G, out) float16 -> weight (out, in) in ``dtype``."""
    group_size = codes.shape[0] // scales.shape[0]
    s = scales.float().repeat_interleave(group_size, dim=0)
    z = zeros.float().repeat_interleave(group_size, dim=0)
    return (s * (codes.float() - z)).T.contiguous().to(dtype)


def int4_cpu_supported(group_size: int, in_features: int, out_features: int) -> bool:
    return (group_size in INT4_GROUP_SIZES and in_features % group_size == 0 and out_features % 16 == 0
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"))


def unpack_int4pack_cpu(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Codes (out, in) uint8 of a weight packed by ``aten._convert_weight_to_int4pack_for_cpu(w, 1)``.

    torch's layout (2.x): output rows in blocks of 64; in a full block, for every input k, 32 bytes whose
    low nibbles are rows 0..31 and high nibbles rows 32..63 of the block; a last block of fewer rows
    stores adjacent rows as the low/high nibbles of one byte. :class:`Int4CpuWeight` checks this on
    every layer it packs and refuses (ValueError) if a torch version lays codes out otherwise.
    """
    flat = packed.reshape(-1).view(torch.uint8)
    blocks, start = [], 0
    for first in range(0, out_features, 64):
        rows = min(64, out_features - first)
        block = flat[start:start + rows * in_features // 2].reshape(in_features, rows // 2)
        if rows == 64:
            blocks.append(torch.cat([block & 15, block >> 4], dim=1).T)
        else:
            blocks.append(torch.stack([block & 15, block >> 4], dim=2).reshape(in_features, rows).T)
        start += rows * in_features // 2
    return torch.cat(blocks)


class Int4CpuWeight:
    """An AWQ layer packed for torch's CPU int4 GEMM: the layer's only resident copy of its codes.

    The kernel's time grows with the rows of x (it is built for decoding): up to ``max_rows`` rows it
    multiplies; with more rows (prefill, calibration) the codes are unpacked from the same buffer,
    dequantized in float32 and torch's float GEMM multiplies.
    """

    max_rows = 8

    def __init__(self, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> None:
        """codes (in, out) uint8, zeros (G, out) uint8, scales (G, out) float16. ValueError if torch packs otherwise."""
        self.in_features, self.out_features = codes.shape
        self.group_size = self.in_features // scales.shape[0]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.T.to(torch.int32).contiguous(), 1)
        if not torch.equal(unpack_int4pack_cpu(self.packed, self.out_features, self.in_features), codes.T):
            raise ValueError("this torch packs int4 weights in a layout qcore_awq cannot read back")
        self.zeros, self.scales = zeros, scales
        s = scales.float()
        self.scales_and_zeros = torch.stack([s, s * (8 - zeros.float())], dim=-1).contiguous()  # (G, out, 2)

    def codes(self) -> torch.Tensor:
        """The 4-bit codes (in, out) uint8, exactly."""
        return unpack_int4pack_cpu(self.packed, self.out_features, self.in_features).T.contiguous()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32/bfloat16 -> (..., out) in x's dtype."""
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= self.max_rows:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.group_size,
                                                           self.scales_and_zeros.to(x.dtype))
        else:
            y = torch.nn.functional.linear(x2, dequantize(self.codes(), self.zeros, self.scales, x.dtype))
        return y.reshape(*x.shape[:-1], self.out_features)
