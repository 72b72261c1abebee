"""AWQ matmul kernels: the plain-torch reference and the fast CPU path.

- reference: ``W = scales * (q - zeros)`` per group (float32), then ``F.linear``.
- CPU: :mod:`qcore.int4` on this package's compiled kernels (``torch.ops.qcore_awq.lut4_gemm``, qcore's
  shared ``lut4.h``): ``lut4(x, q, s) - (sum of x per group) @ (s * z)`` with code 0..15, the int8-activation
  variant under ``QCORE_INT8_ACTIVATIONS=1``; without the binary, torch's packed int4 GEMM
  (``aten._weight_int4pack_mm_for_cpu``, ``zero = scale * (8 - z)``). The repacked codes are the layer's
  only resident copy of its weights: the checkpoint's codes are read back from it exactly (``codes()``).
"""

from __future__ import annotations

import torch

from qcore import int4

from .ops import OPS


def dequantize(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: codes (in, out) uint8, zeros (G, out), scales (G, out) float16 -> weight (out, in) in ``dtype``."""
    group_size = codes.shape[0] // scales.shape[0]
    s = scales.float().repeat_interleave(group_size, dim=0)
    z = zeros.float().repeat_interleave(group_size, dim=0)
    return (s * (codes.float() - z)).T.contiguous().to(dtype)


def fast_weight(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> int4.Int4LutWeight | int4.Int4PackWeight | None:
    """The fast CPU layout of a layer (codes (in, out) uint8, zeros (G, out), scales (G, out) float16), or None
    when no kernel takes its shape (:func:`qcore.int4.affine_int4_weight` chooses: this package's lookup GEMV,
    torch's int4 GEMM without the binary)."""
    group_size = codes.shape[0] // scales.shape[0]
    return int4.affine_int4_weight(codes.T, scales.float().T, zeros.float().T, group_size, OPS)
