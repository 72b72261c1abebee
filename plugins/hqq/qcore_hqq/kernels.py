"""HQQ matmul kernels: the plain-torch reference and the fast CPU path for 4-bit.

- reference (any nbits, axis, group): unpack hqq's ``W_q``, ``W = (W_q - zero) * scale`` in
  float32, reshape to (out, in), ``F.linear``. This is the truth the tests hold the rest to.
- 4-bit, axis 1, groups inside a row (group_size in 32/64/128/256 dividing in_features,
  out_features a multiple of 16): the codes are repacked once, at load, into torch's CPU int4
  GEMM layout (``_weight_int4pack_mm_for_cpu``), which computes ``x @ ((q - 8) * s + b)`` per
  group. HQQ's float zero folds into the offset: ``(q - z) * s = (q - 8) * s + (8 - z) * s``,
  so ``b = (8 - z) * s``; no float weight is materialized per forward. The GEMM runs in
  bfloat16 (x, s and b are rounded to bfloat16, the sums are float32): torch's kernel is ~30x
  slower with float32 inputs, and bfloat16 keeps it ahead of a dense float32 matmul from one
  row (decoding) to hundreds (prefill). This layout is the only resident copy of the codes:
  :meth:`Int4PackedWeight.codes` recovers them exactly (for saving, dequantize and training).
"""

from __future__ import annotations

import functools

import torch

from .bitpack import unpack
from .format import HqqMeta

INT4_GROUP_SIZES = (32, 64, 128, 256)


def codes_of(W_q: torch.Tensor, meta: HqqMeta, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """packed W_q -> codes in the grouped layout ``meta.code_shape()``."""
    return unpack(W_q, meta.packing, rows=meta.code_shape()[0], dtype=dtype)


def dequantize(W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, meta: HqqMeta,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference: float weight (out, in) = ((W_q - zero) * scale) in the grouped layout, reshaped."""
    W_r = codes_of(W_q, meta, torch.float32)
    return ((W_r - zero.float()) * scale.float()).reshape(meta.shape).to(dtype)


def int4_fast_path_supported(meta: HqqMeta, device: torch.device) -> bool:
    """True when the layer fits torch's CPU int4 GEMM (see the module docstring)."""
    out_features, in_features = meta.shape
    return (
        device.type == "cpu" and meta.nbits == 4 and meta.axis == 1 and meta.channel_wise
        and meta.group_size in INT4_GROUP_SIZES and in_features % meta.group_size == 0
        and out_features % 16 == 0 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    )


@functools.lru_cache(maxsize=8)
def int4pack_positions(out_features: int, in_features: int) -> torch.Tensor:
    """Where torch's CPU int4 packing puts each code: int32 (out*in,), the index of code (n, k) in
    the packed tensor's nibble stream (byte i -> nibbles 2i (low), 2i+1 (high)).

    Learnt by packing probes whose codes spell out their own positions, 4 bits per probe, so it
    holds for whatever blocking this build of torch uses (it depends on the CPU's vector width).
    """
    numel = out_features * in_features
    index = torch.arange(numel, dtype=torch.int64)
    source = torch.zeros(numel, dtype=torch.int64)
    for shift in range(0, max(numel - 1, 1).bit_length(), 4):
        probe = ((index >> shift) & 15).to(torch.int32).view(out_features, in_features)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
        nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        source |= nibbles << shift
    positions = torch.empty(numel, dtype=torch.int32)
    positions[source] = torch.arange(numel, dtype=torch.int32)
    return positions


class Int4PackedWeight:
    """A 4-bit HQQ layer (axis 1) in torch's CPU int4 GEMM layout.

    - ``packed``: uint8 (out, in/2) in torch's layout.
    - ``scales_and_offsets``: bfloat16 (in/g, out, 2): ``[s, (8 - z) * s]`` per group (computed in float32).
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> None:
        """codes (out, in) integers in 0..15; scale, zero (out, in/g) float."""
        self.out_features, self.in_features = codes.shape
        self.group_size = group_size
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        s, z = scale.float(), zero.float()
        self.scales_and_offsets = torch.stack([s.T, ((8 - z) * s).T], dim=-1).to(torch.bfloat16).contiguous()

    def codes(self) -> torch.Tensor:
        """uint8 codes (out, in), exactly as packed."""
        positions = int4pack_positions(self.out_features, self.in_features)
        nibbles = torch.stack([self.packed & 15, self.packed >> 4], dim=-1).reshape(-1)
        return nibbles[positions.to(torch.int64)].view(self.out_features, self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32/bfloat16/float16 -> (..., out) in x's dtype, computed in bfloat16."""
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        sz = self.scales_and_offsets
        if sz.dtype != torch.bfloat16:  # a model.float() converted the buffer
            sz = sz.to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, sz)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
