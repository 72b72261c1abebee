"""GPTQ matmul kernels: the plain-torch reference and the fast CPU paths.

- reference: dequantize (unpack, ``scales * (q - zeros)`` by ``g_idx``) + ``F.linear``.
- 4-bit CPU: torch's packed int4 GEMM (``_weight_int4pack_mm_for_cpu``), which computes
  ``x @ ((q - 8) * scale + zero)``; GPTQ's ``scale * (q - z)`` maps onto it with
  ``zero = scale * (8 - z)``. Act-order is handled by permuting the input columns so every
  group is contiguous; a partial last group (e.g. 576 = 4*128 + 64) is padded with zero inputs.
- 8-bit CPU: ``_weight_int8pack_mm`` (per-channel scale), when there is one group per row
  and the zero point is the symmetric 128; otherwise the reference.
"""

from __future__ import annotations

import torch

from qcore.packing import unpack_int32

INT4_GROUP_SIZES = (32, 64, 128, 256)


def unpack_qweight(qweight: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """int32 (in*bits/32, out) -> uint8 codes (in, out)."""
    return unpack_int32(qweight, bits, in_features, dim=0)


def dequantize(qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int,
               in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: float weight (out, in) = scales[g_idx] * (q - zeros[g_idx]), transposed."""
    q = unpack_qweight(qweight, bits, in_features).float()
    w = scales.float()[g_idx] * (q - zeros.float()[g_idx])
    return w.T.contiguous().to(dtype)


class Int4CpuWeight:
    """A GPTQ 4-bit layer repacked for torch's CPU int4 GEMM.

    The kernel's time grows linearly with the rows of x (it is built for decoding): past
    ``max_rows`` rows, dequantize + matmul is faster (measured: 1 row 12x faster, 16 rows slower).
    """

    max_rows = 8

    def __init__(self, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                 in_features: int, group_size: int) -> None:
        q = unpack_qweight(qweight, 4, in_features).to(torch.int32)  # (in, out)
        self.perm = torch.argsort(g_idx, stable=True)
        self.needs_perm = not torch.equal(self.perm, torch.arange(in_features))
        sorted_groups = g_idx[self.perm]
        self.padded_in = -(-in_features // group_size) * group_size
        self.pad = self.padded_in - in_features
        q = q[self.perm]
        if self.pad:
            q = torch.cat([q, torch.full((self.pad, q.shape[1]), 8, dtype=torch.int32)])
        # every padded group must be one GPTQ group: check that groups are contiguous runs of group_size
        expected = torch.arange(in_features) // group_size
        if not torch.equal(sorted_groups, expected):
            raise ValueError("groups are not contiguous runs of group_size after sorting; use the reference kernel")
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.T.contiguous(), 1)
        scale = scales.float()
        self.scales_and_zeros = torch.stack([scale, scale * (8 - zeros.float())], dim=-1).contiguous()
        self.group_size = group_size
        self.out_features = q.shape[1]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32/bfloat16 -> (..., out) in x's dtype."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.needs_perm:
            x2 = x2[:, self.perm]
        if self.pad:
            x2 = torch.nn.functional.pad(x2, (0, self.pad))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.group_size,
                                                       self.scales_and_zeros.to(x.dtype))
        return y.reshape(*shape[:-1], self.out_features)


def int4_cpu_supported(bits: int, group_size: int, in_features: int) -> bool:
    return bits == 4 and group_size in INT4_GROUP_SIZES and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class Int8CpuWeight:
    """A GPTQ 8-bit layer with one symmetric group per row, for ``_weight_int8pack_mm``."""

    max_rows = 8  # like the int4 kernel: linear in the rows (1 row 13x faster, 256 rows 11x slower)

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, in_features: int) -> None:
        q = unpack_qweight(qweight, 8, in_features).to(torch.int16)  # (in, out), zero point 128
        self.weight = (q - 128).to(torch.int8).T.contiguous()
        self.scales = scales.float()[0].contiguous()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).float().contiguous(), self.weight, self.scales)
        return y.reshape(*shape[:-1], self.weight.shape[0]).to(x.dtype)


def int8_cpu_supported(bits: int, zeros: torch.Tensor) -> bool:
    return bits == 8 and zeros.shape[0] == 1 and bool((zeros == 128).all()) and hasattr(torch.ops.aten, "_weight_int8pack_mm")
