"""HQQ matmul kernels: the plain-torch reference and the fast CPU paths for 4-bit and 8-bit.

- reference (any nbits, axis, group): unpack hqq's ``W_q``, ``W = (W_q - zero) * scale`` in
  float32, reshape to (out, in), ``F.linear``. This is the truth the tests hold the rest to.
- 4-bit, axis 1, groups inside a row: :mod:`qcore.int4` on this package's compiled kernels
  (``torch.ops.qcore_hqq.lut4_gemm``, qcore's shared ``lut4.h``), code 0..15, once repacked at load.
  HQQ's zero is a float: ``(q - z) * s`` is computed as ``s * (q . x) - s * z * sum(x)`` per group
  (``lut4(x, q, s) - (sum of x per group) @ (s * z)``), float32 throughout; no float weight is
  materialized per decode step (prefill dequantizes in C into a reused buffer). The
  ``QCORE_INT8_ACTIVATIONS=1`` int8-activation variant applies to groups of a multiple of 64.
  Without the binary: torch's CPU int4 GEMM (``_weight_int4pack_mm_for_cpu``, ``x @ ((q - 8) * s + b)``
  with ``b = (8 - z) * s``) in bfloat16 (torch's kernel is ~30x slower in float32), where its shapes
  allow (groups of 32..256, ``out_features % 16 == 0``); the lookup ops' torch definition otherwise.
  The layout is the only resident copy of the codes: ``codes()`` recovers them exactly (for saving,
  dequantize and training).
- 8-bit, axis 1 (:class:`Int8GroupWeight`): the codes are held once as int8 ``q - 128``. One group per
  row: the shared int8 GEMV (``int8_gemm``, one scale per row) minus ``s * (z - 128) * sum(x)``. Groups
  inside a row (hqq's default, 64): the GEMV cannot take a scale per group, so the documented torch
  path scales the int8 weight into a reused, cache-sized float32 buffer a few hundred rows at a time
  (``s * (q - 128)``), multiplies, and subtracts ``(sum of x per group) @ (s * (z - 128))``: no
  allocation per call and no float copy of the whole weight (measured ~10x faster than the reference
  on a 5632x2048 layer, still slower than a float32 matmul).
- 1/2/3-bit and axis 0: the reference.
"""

from __future__ import annotations

import torch

from qcore import int4, lut4

from .bitpack import unpack
from .format import HqqMeta
from .ops import OPS


def codes_of(W_q: torch.Tensor, meta: HqqMeta, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """packed W_q -> codes in the grouped layout ``meta.code_shape()``."""
    return unpack(W_q, meta.packing, rows=meta.code_shape()[0], dtype=dtype)


def dequantize(W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, meta: HqqMeta,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: float weight (out, in) = ((W_q - zero) * scale) in the grouped layout, reshaped."""
    W_r = codes_of(W_q, meta, torch.float32)
    return ((W_r - zero.float()) * scale.float()).reshape(meta.shape).to(dtype)


class Int8GroupWeight:
    """An 8-bit axis-1 layer: ``W[n, k] = s[n, g] * (q[n, k] - z[n, g])``, ``g = k // group_size``, float zeros.

    Resident: int8 ``weight (n, k)`` (``q - 128``, the same bytes as hqq's ``W_q`` shifted), float32
    ``scales (n, groups)`` and ``scaled_zeros (groups, n)`` (``s * (z - 128)``).
    """

    max_rows = 1 << 62

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> None:
        """codes (n, k) integers 0..255; scale, zero (n, k / group_size) float."""
        self.out_features, self.in_features = codes.shape
        self.group_size = group_size
        self.weight = (codes.to(torch.int16) - 128).to(torch.int8).contiguous()
        s = scale.float()
        self.scales = s.contiguous()
        self.scaled_zeros = (s * (zero.float() - 128)).T.contiguous()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "scales": self.scales, "scaled_zeros": self.scaled_zeros}

    def codes(self) -> torch.Tensor:
        """uint8 codes (n, k), exactly."""
        return (self.weight.to(torch.int16) + 128).to(torch.uint8)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., k) float32/bfloat16/float16 -> (..., n) in x's dtype, float32 inside."""
        n, k, g = self.out_features, self.in_features, self.group_size
        x2 = x.reshape(-1, k).float().contiguous()
        if self.scales.shape[1] == 1:  # one group per row: the int8 GEMV
            y = int4.Int8RowWeight(self.weight, self.scales.view(-1), OPS).matmul(x2)
        elif torch.is_grad_enabled() and x.requires_grad:
            y = x2 @ (self.weight.float().view(n, -1, g) * self.scales.unsqueeze(-1)).view(n, k).T
        else:  # a few hundred rows of W at a time, scaled into a reused cache-sized buffer
            rows = max(1, min(n, lut4.FALLBACK_CHUNK // k))
            buf = lut4.scratch(rows * k, torch.float32)
            y = torch.empty(x2.shape[0], n)
            for r in range(0, n, rows):
                take = min(rows, n - r)
                w = buf[: take * k].view(take, k)
                w.copy_(self.weight[r:r + take])
                w.view(take, -1, g).mul_(self.scales[r:r + take].unsqueeze(-1))
                torch.mm(x2, w.T, out=y[:, r:r + take])
        y = y.addmm(x2.view(x2.shape[0], -1, g).sum(-1), self.scaled_zeros, alpha=-1)
        return y.to(x.dtype).reshape(*x.shape[:-1], n)


def fast_weight(W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                meta: HqqMeta) -> int4.Int4LutWeight | int4.Int4PackWeight | Int8GroupWeight | None:
    """The fast CPU layout of a 4-bit or 8-bit axis-1 layer (see the module docstring), or None (the reference runs)."""
    if not (W_q.device.type == "cpu" and meta.nbits in (4, 8) and meta.axis == 1 and meta.channel_wise
            and meta.group_size):
        return None
    out_features, in_features = meta.shape
    if in_features % meta.group_size:
        return None
    groups = (out_features, in_features // meta.group_size)
    codes = codes_of(W_q, meta).reshape(meta.shape)
    if meta.nbits == 8:
        return Int8GroupWeight(codes, scale.reshape(groups), zero.reshape(groups), meta.group_size)
    return int4.affine_int4_weight(codes, scale.reshape(groups), zero.reshape(groups), meta.group_size, OPS,
                                   fallback_dtype=torch.bfloat16)
