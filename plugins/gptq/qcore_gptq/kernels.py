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

from qcore import lut4
from qcore.packing import pack_int32, pack_uint4_pairs, unpack_int32, unpack_uint4_pairs

from . import ops

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


def grouped_codes(qweight: torch.Tensor, g_idx: torch.Tensor, in_features: int, group_size: int,
                  pad_code: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """4-bit codes ``(padded_in, out)`` int32 with every group a contiguous run of ``group_size`` rows.

    Act-order layers are sorted by group (``perm``, applied to x's columns too; None when
    the order is already sorted); a partial last group is padded with ``pad_code`` rows
    (multiplied by zero inputs). Raises ValueError when sorting does not give whole groups.
    """
    q = unpack_qweight(qweight, 4, in_features).to(torch.int32)  # (in, out)
    perm = torch.argsort(g_idx, stable=True)
    if not torch.equal(g_idx[perm], torch.arange(in_features, device=g_idx.device) // group_size):
        raise ValueError("groups are not contiguous runs of group_size after sorting; use the reference kernel")
    if torch.equal(perm, torch.arange(in_features, device=perm.device)):
        perm = None
    else:
        q = q[perm]
    pad = -in_features % group_size
    if pad:
        q = torch.cat([q, torch.full((pad, q.shape[1]), pad_code, dtype=torch.int32)])
    return q, perm, pad


def _permute_pad(x: torch.Tensor, perm: torch.Tensor | None, pad: int) -> torch.Tensor:
    """x (..., in) -> (rows, padded_in): columns in group order, zero inputs for the padding."""
    x2 = x.reshape(-1, x.shape[-1])
    if perm is not None:
        x2 = x2[:, perm]
    return torch.nn.functional.pad(x2, (0, pad)) if pad else x2


def _unpermute_unpad(q: torch.Tensor, perm: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """Codes (out, padded_in) in group order -> (out, in) in the checkpoint's column order."""
    q = q[:, :in_features]
    if perm is None:
        return q
    out = torch.empty_like(q)
    out[:, perm] = q
    return out


class Int4LutWeight:
    """A GPTQ 4-bit layer on the compiled lookup GEMV (``torch.ops.qcore_gptq.lut4_gemm``), for decoding.

    ``W = s * (q - z)`` per group is computed as ``lut4(x, q, s) - (sum of x per group) @ (s * z)``:
    the codes are 0..15, the group is the kernel's block, and the zero-point term is one small
    matmul. Up to ``gemv_rows`` rows of x (decoding) the GEMV never materializes W and accumulates
    in float32; more rows (prefill) dequantize ``s * q`` in C and let torch multiply.

    Resident: ``packed`` uint8 ``(out * padded_in / 2,)`` (the same bytes as ``qweight``), float32
    ``scales (out * groups,)`` and ``scaled_zeros (groups, out)``.
    """

    max_rows = 1 << 62  # takes any number of rows itself
    gemv_rows = 8  # as bitsandbytes' Linear4bit: the GEMV beats dequantize + matmul up to ~8 rows

    def __init__(self, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                 in_features: int, group_size: int) -> None:
        q, self.perm, self.pad = grouped_codes(qweight, g_idx, in_features, group_size, pad_code=0)
        self.in_features, self.out_features, self.group_size = in_features, q.shape[1], group_size
        self.shape = (q.shape[1], q.shape[0])  # (out, padded_in), row-major like the kernel wants
        self.packed = pack_uint4_pairs(q.T.contiguous())
        self.scales = scales.float().T.contiguous().view(-1)  # (out * groups,): block n * groups + g
        self.scaled_zeros = (scales.float() * zeros.float()).contiguous()  # (groups, out)
        self.code = torch.arange(16, dtype=torch.float32)
        self.code_i8 = torch.arange(16, dtype=torch.int8)  # the codes are integers: exact in the int8 path
        # decode with x quantized to int8 per 64 values (lut4_gemm_q8): faster, approximate; see qcore.lut4
        self.int8_activations = lut4.int8_activations_default() and lut4.supported_q8(group_size, *self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales": self.scales, "scaled_zeros": self.scaled_zeros, "code": self.code,
                "code_i8": self.code_i8}

    def qweight(self) -> torch.Tensor:
        """The checkpoint's ``qweight`` int32 ``(in / 8, out)``, rebuilt from the resident nibbles."""
        q = unpack_uint4_pairs(self.packed).view(self.shape)
        return pack_int32(_unpermute_unpad(q, self.perm, self.in_features).T.contiguous(), 4, dim=0)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        # float32 throughout: s*q and s*z are each larger than their difference, so a 16-bit
        # product would lose the bits the subtraction needs
        x2 = _permute_pad(x, self.perm, self.pad).float().contiguous()
        n, k = self.shape
        if self.int8_activations and x2.shape[0] <= lut4.Q8_MAX_ROWS:
            gemm = torch.ops.qcore_gptq.lut4_gemm_q8 if torch.compiler.is_compiling() else ops.lut4_gemm_q8
            y = gemm(x2, self.packed, self.scales, self.code_i8, 1.0, n, k, self.group_size)
            # the zero-point term on the same int8 x the kernel used, so s*(q - z) sees one x
            q, dx = lut4.quantize_rows_q8(x2)
            x2 = (q.float().view(q.shape[0], -1, lut4.Q8_BLOCK) * dx.unsqueeze(-1)).view_as(x2)
        elif x2.shape[0] <= self.gemv_rows:
            gemm = torch.ops.qcore_gptq.lut4_gemm if torch.compiler.is_compiling() else ops.lut4_gemm
            y = gemm(x2, self.packed, self.scales, self.code, n, k, self.group_size)
        else:
            training = torch.is_grad_enabled() and x.requires_grad
            w = torch.empty(n, k) if training else lut4.scratch(n * k, torch.float32).view(n, k)
            ops.lut4_dequantize(self.packed, self.scales, self.code, n, k, self.group_size, w)
            y = x2 @ w.T
        y -= x2.view(x2.shape[0], -1, self.group_size).sum(-1) @ self.scaled_zeros
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int4CpuWeight:
    """A GPTQ 4-bit layer repacked for torch's CPU int4 GEMM.

    The kernel's time grows linearly with the rows of x (it is built for decoding): past
    ``max_rows`` rows, dequantize + matmul is faster (measured: 1 row 12x faster, 16 rows slower).
    """

    max_rows = 8
    keeps_qweight = True  # torch's packed int4 layout has no unpack op: the layer keeps qweight for saving

    def __init__(self, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                 in_features: int, group_size: int) -> None:
        q, self.perm, self.pad = grouped_codes(qweight, g_idx, in_features, group_size, pad_code=8)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.T.contiguous(), 1)
        scale = scales.float()
        self.scales_and_zeros = torch.stack([scale, scale * (8 - zeros.float())], dim=-1).contiguous()
        self.group_size = group_size
        self.out_features = q.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales_and_zeros": self.scales_and_zeros}

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32/bfloat16 -> (..., out) in x's dtype."""
        shape = x.shape
        x2 = _permute_pad(x, self.perm, self.pad)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.group_size,
                                                       self.scales_and_zeros.to(x.dtype))
        return y.reshape(*shape[:-1], self.out_features)


def int4_lut_supported(bits: int, group_size: int, qweight: torch.Tensor) -> bool:
    """4-bit, CPU, groups the lookup kernel takes, and the compiled binary present."""
    return (bits == 4 and qweight.device.type == "cpu" and lut4.supported(group_size, 1, group_size)
            and ops.library() is not None)


def int4_cpu_supported(bits: int, group_size: int, in_features: int) -> bool:
    return bits == 4 and group_size in INT4_GROUP_SIZES and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class Int8CpuWeight:
    """A GPTQ 8-bit layer with one symmetric group per row: int8 weights and one scale per output.

    Up to ``gemv_rows`` rows (decoding), the compiled int8 GEMV (``torch.ops.qcore_gptq.int8_gemm``;
    torch's ``_weight_int8pack_mm`` without the binary, 5x slower here); more rows (prefill), the
    int8 weight is scaled into x's dtype in one pass and torch multiplies (the reference unpacks
    the int32 words and gathers by ``g_idx``: 20x slower at 64 rows).

    Resident: int8 ``weight (out, in)`` (the same bytes as ``qweight``) and float32 ``scales (out,)``.
    """

    max_rows = 1 << 62  # takes any number of rows itself
    gemv_rows = 8  # _weight_int8pack_mm is linear in the rows (1 row 13x faster, 256 rows 11x slower)

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, in_features: int) -> None:
        q = unpack_qweight(qweight, 8, in_features).to(torch.int16)  # (in, out), zero point 128
        self.weight = (q - 128).to(torch.int8).T.contiguous()
        self.scales = scales.float()[0].contiguous()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "scales": self.scales}

    def qweight(self) -> torch.Tensor:
        """The checkpoint's ``qweight`` int32 ``(in / 4, out)``, rebuilt from the resident int8 weight."""
        return pack_int32((self.weight.to(torch.int16) + 128).T.contiguous(), 8, dim=0)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.shape[0] <= self.gemv_rows:
            gemm = torch.ops.qcore_gptq.int8_gemm if torch.compiler.is_compiling() else ops.int8_gemm
            y = gemm(x2.float().contiguous(), self.weight, self.scales).to(x.dtype)
        elif x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad):
            w = torch.mul(self.weight, self.scales.unsqueeze(1), out=lut4.scratch(self.weight.numel(), torch.float32).view(self.weight.shape))
            y = torch.nn.functional.linear(x2, w)
        else:
            y = torch.nn.functional.linear(x2, self.weight.to(x.dtype) * self.scales.to(x.dtype).unsqueeze(1))
        return y.reshape(*shape[:-1], self.weight.shape[0])


def int8_cpu_supported(bits: int, zeros: torch.Tensor) -> bool:
    return bits == 8 and zeros.shape[0] == 1 and bool((zeros == 128).all()) and hasattr(torch.ops.aten, "_weight_int8pack_mm")
