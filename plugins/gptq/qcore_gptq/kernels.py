"""GPTQ matmul kernels: the plain-torch reference and the fast CPU paths.

- reference: dequantize (unpack, ``scales * (q - zeros)`` by ``g_idx``) + ``F.linear``.
- 4-bit CPU, first choice: this package's compiled lookup GEMV (:class:`Int4LutWeight`,
  ``torch.ops.qcore_gptq.lut4_gemm``, qcore's shared ``lut4.h`` with runtime AVX-512/AVX2/portable dispatch).
- 4-bit CPU without the binary (installed without a C compiler): torch's packed int4 GEMM (``_weight_int4pack_mm_for_cpu``), which computes
  ``x @ ((q - 8) * scale + zero)``; GPTQ's ``scale * (q - z)`` maps onto it with
  ``zero = scale * (8 - z)``. Act-order is handled by permuting the input columns so every
  group is contiguous; a partial last group (e.g. 576 = 4*128 + 64) is padded with zero inputs.
- 8-bit CPU, one group per row with the symmetric zero point 128: the compiled int8 GEMV
  (``torch.ops.qcore_gptq.int8_gemm``; ``_weight_int8pack_mm`` without the binary); otherwise the reference.

Each fast layout is the layer's only resident copy of the weight: the layer drops ``qweight`` once
repacked, and :meth:`qweight` rebuilds the checkpoint tensor (bit-identical) when saving.
"""

from __future__ import annotations

import torch

from qcore import int4, lut4
from qcore.packing import pack_int32, unpack_int32

from . import ops

INT4_GROUP_SIZES = int4.INT4PACK_GROUP_SIZES
OPS = ops.OPS


def unpack_qweight(qweight: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """int32 (in*bits/32, out) -> uint8 codes (in, out)."""
    return unpack_int32(qweight, bits, in_features, dim=0)


def dequantize(qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int,
               in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: float weight (out, in) = scales[g_idx] * (q - zeros[g_idx]), transposed."""
    q = unpack_qweight(qweight, bits, in_features).float()
    w = scales.float()[g_idx] * (q - zeros.float()[g_idx])
    return w.T.contiguous().to(dtype)


def grouped_codes(qweight: torch.Tensor, g_idx: torch.Tensor, in_features: int,
                  group_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """4-bit codes (out, in) uint8 in the checkpoint's column order and the order that makes every group a
    contiguous run of ``group_size`` inputs (None when already so; act-order layers are sorted by group).
    Raises ValueError when sorting does not give whole groups."""
    q = unpack_qweight(qweight, 4, in_features)  # (in, out)
    perm = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[perm], torch.arange(in_features, device=g_idx.device) // group_size):
        raise ValueError("groups are not contiguous runs of group_size after sorting; use the reference kernel")
    return q.T, None if torch.equal(perm, torch.arange(in_features, device=perm.device)) else perm


def _grouped_args(qweight, zeros, scales, g_idx, in_features, group_size):
    """(codes, scales, zeros, perm) for :mod:`qcore.int4`: GPTQ's (groups, out) tensors as (out, groups)."""
    codes, perm = grouped_codes(qweight, g_idx, in_features, group_size)
    return codes, scales.float().T, zeros.float().T, perm


class Int4LutWeight(int4.Int4LutWeight):
    """A GPTQ 4-bit layer on the compiled lookup GEMV (``torch.ops.qcore_gptq.lut4_gemm_affine``), for decoding:
    :class:`qcore.int4.Int4LutWeight` (``lut4(x, q, s)`` minus ``s * z`` times each group's sum of x) built from
    GPTQ's tensors; :meth:`qweight` rebuilds the checkpoint tensor from the resident nibbles."""

    def __init__(self, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                 in_features: int, group_size: int) -> None:
        codes, s, z, perm = _grouped_args(qweight, zeros, scales, g_idx, in_features, group_size)
        super().__init__(codes, s, z, group_size, OPS, perm)

    def qweight(self) -> torch.Tensor:
        """The checkpoint's ``qweight`` int32 ``(in / 8, out)``, rebuilt from the resident nibbles."""
        return pack_int32(self.codes().T.contiguous(), 4, dim=0)


class Int4CpuWeight(int4.Int4PackWeight):
    """A GPTQ 4-bit layer repacked for torch's CPU int4 GEMM (the package installed without its binary):
    :class:`qcore.int4.Int4PackWeight`, in x's dtype. Past ``max_rows`` rows (prefill) the layer
    dequantizes (measured: 1 row 12x faster than that, 16 rows slower)."""

    def __init__(self, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                 in_features: int, group_size: int) -> None:
        codes, s, z, perm = _grouped_args(qweight, zeros, scales, g_idx, in_features, group_size)
        super().__init__(codes, s, z, group_size, perm)

    def qweight(self) -> torch.Tensor:
        return pack_int32(self.codes().T.contiguous(), 4, dim=0)


def int4_lut_supported(bits: int, group_size: int, qweight: torch.Tensor) -> bool:
    """4-bit, CPU, groups the lookup kernel takes, and the compiled binary present."""
    return (bits == 4 and qweight.device.type == "cpu" and lut4.supported(group_size, 1, group_size)
            and ops.library() is not None)


def int4_cpu_supported(bits: int, group_size: int, in_features: int) -> bool:
    return bits == 4 and group_size in INT4_GROUP_SIZES and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class Int8CpuWeight(int4.Int8RowWeight):
    """A GPTQ 8-bit layer with one symmetric group per row: :class:`qcore.int4.Int8RowWeight` (the compiled
    int8 GEMV up to 8 rows, ``_weight_int8pack_mm`` without the binary; scaled weight + torch past that).

    Resident: int8 ``weight (out, in)`` (the same bytes as ``qweight``) and float32 ``scales (out,)``.
    """

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, in_features: int) -> None:
        q = unpack_qweight(qweight, 8, in_features).to(torch.int16)  # (in, out), zero point 128
        super().__init__((q - 128).to(torch.int8).T.contiguous(), scales.float()[0], OPS)

    def qweight(self) -> torch.Tensor:
        """The checkpoint's ``qweight`` int32 ``(in / 4, out)``, rebuilt from the resident int8 weight."""
        return pack_int32((self.weight.to(torch.int16) + 128).T.contiguous(), 8, dim=0)


def int8_cpu_supported(bits: int, zeros: torch.Tensor) -> bool:
    return bits == 8 and zeros.shape[0] == 1 and bool((zeros == 128).all()) and hasattr(torch.ops.aten, "_weight_int8pack_mm")
