"""torchao's ``Int4Tensor`` (``Int4WeightOnlyConfig``, plain packing) made on a CPU, without mslk.

torchao 0.18 quantizes ``Int4WeightOnlyConfig(int4_packing_format="plain")`` (the default) with
mslk's ``int4_row_quantize_zp`` and ``pack_int4``, which ship in a CUDA-only wheel; its linear is
mslk's CUDA kernel. This module re-implements those two functions in torch, with the same float32
operations in the same order, and builds torchao's own ``Int4Tensor`` from their output, so the
checkpoint holds what torchao on a GPU writes:

- ``qdata`` int8 ``(N, K / 2)``: signed int4 values ``q`` in [-8, 7], column ``2j`` in the low nibble,
  column ``2j + 1`` in the high nibble of byte ``j``;
- ``scale`` and ``zero_point`` ``(K / group_size, N)`` in the weight's dtype (groups first, "column
  major" for CUTLASS);
- ``W[n, k] = q[n, k] * scale[g, n] + zero_point[g, n]``, ``g = k // group_size``, where per group
  ``scale = max(max - min, 1e-6) / 15``, ``zero_point = min + 8 * scale`` and
  ``q = clamp(round((w - min) / scale), 0, 15) - 8``, all in float32.

On the CPU such a weight runs on qcore's affine int4 kernels (:func:`cpu_kernel`): codes
``u = q + 8`` in 0..15 and ``W = scale * u - (8 * scale - zero_point)``.
"""

from __future__ import annotations

from typing import Any

import torch

from qcore import int4

from .ops import OPS

INT4_CONFIG = "Int4WeightOnlyConfig"
PLAIN = "PLAIN"


def int4_row_quantize_zp(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mslk's ``int4_row_quantize_zp`` in torch: x (N, K) float -> q int8 (N, K) in [-8, 7],
    scale float32 (K / group_size, N), zero_point float32 (K / group_size, N)."""
    if x.dim() != 2 or x.shape[1] % group_size:
        raise ValueError(f"expected a 2-D weight whose columns split into groups of {group_size}, got {list(x.shape)}")
    n, k = x.shape
    groups = x.to(torch.float).view(n, k // group_size, group_size)
    max_val = groups.amax(dim=-1, keepdim=True)
    min_val = groups.amin(dim=-1, keepdim=True)
    scale = (max_val - min_val).clamp(min=1e-6) / 15
    zero_point = min_val + scale * 8
    q = groups.sub(min_val).div(scale).round().clamp_(0, 15)
    q = (q - 8).to(torch.int8).view(n, k)
    return q, scale.view(n, -1).t().contiguous(), zero_point.view(n, -1).t().contiguous()


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """mslk's ``pack_int4``: int8 (N, K) in [-8, 7] -> int8 (N, K / 2); column 2j low nibble, 2j + 1 high."""
    low = torch.bitwise_and(q[:, ::2], 0xF)
    high = torch.bitwise_left_shift(q[:, 1::2], 4)
    return torch.bitwise_or(low, high).contiguous()


def unpack_int4(qdata: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: int8 (N, K / 2) -> codes ``q + 8`` uint8 (N, K) in 0..15."""
    packed = qdata.view(torch.uint8)
    low = (packed & 0xF) ^ 8  # signed nibble -> q + 8 (flipping the sign bit adds 8 mod 16)
    high = (packed >> 4) ^ 8
    return torch.stack([low, high], dim=-1).view(qdata.shape[0], -1)


def is_plain_int4(ao_config: Any) -> bool:
    """Whether a torchao config is ``Int4WeightOnlyConfig`` with the plain packing (the one this module makes)."""
    if type(ao_config).__name__ != INT4_CONFIG:
        return False
    fmt = getattr(ao_config.int4_packing_format, "name", ao_config.int4_packing_format)
    return str(fmt).upper() == PLAIN


def unsupported_reason(ao_config: Any, in_features: int) -> str | None:
    """Why qcore cannot make this Int4WeightOnlyConfig weight on a CPU, or None when it can."""
    if not is_plain_int4(ao_config):
        fmt = getattr(ao_config.int4_packing_format, "value", ao_config.int4_packing_format)
        return (f"int4_packing_format={fmt!r} has CUDA kernels only in torchao (qcore makes the 'plain' packing on "
                "a CPU: Int4WeightOnlyConfig(int4_packing_format='plain'), the default)")
    algo = getattr(ao_config.int4_choose_qparams_algorithm, "name", ao_config.int4_choose_qparams_algorithm)
    if str(algo).upper() != "TINYGEMM":
        return f"int4_choose_qparams_algorithm={algo!r} is not available with the plain packing in torchao"
    if in_features % ao_config.group_size:
        return (f"group_size={ao_config.group_size} does not divide in_features={in_features} (torchao would leave "
                "this layer in float); give a group size that divides it or list the layer in modules_to_not_convert")
    return None


def int4_tensor(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """torchao's ``Int4Tensor.from_hp(weight, [1, group_size])`` for a (N, K) float weight, made without mslk.

    On the meta device only the layout is made (shapes and dtypes, no values).
    """
    from torchao.quantization import Int4Tensor

    n, k = weight.shape
    if weight.device.type == "meta":
        qdata = torch.empty(n, k // 2, dtype=torch.int8, device="meta")
        scale = torch.empty(k // group_size, n, dtype=weight.dtype, device="meta")
        zero_point = torch.empty_like(scale)
    else:
        q, scale, zero_point = int4_row_quantize_zp(weight, group_size)
        qdata = pack_int4(q)
        scale, zero_point = scale.to(weight.dtype), zero_point.to(weight.dtype)
    return Int4Tensor(qdata=qdata, scale=scale, zero_point=zero_point, block_size=[1, group_size],
                      shape=weight.shape, act_pre_scale=None, activation_dtype=torch.bfloat16)


def scaled_zeros(weight: torch.Tensor) -> torch.Tensor:
    """``8 * scale - zero_point`` float32 (N, groups): ``s * z`` of ``W = s * (u - z)`` with codes ``u = q + 8``."""
    s = weight.scale.float().t()
    return 8 * s - weight.zero_point.float().t()


def dequantize(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W (N, K) of an ``Int4Tensor`` = ``(u - 8) * scale + zero_point`` in float32, then ``dtype`` (default: its dtype)."""
    n, k = weight.shape
    group = weight.block_size[-1]
    q = unpack_int4(weight.qdata).float().view(n, k // group, group) - 8
    w = q * weight.scale.float().t().unsqueeze(-1) + weight.zero_point.float().t().unsqueeze(-1)
    return w.view(n, k).to(dtype or weight.dtype)


def cpu_kernel(weight: torch.Tensor) -> int4.Int4LutWeight | int4.Int4PackWeight | None:
    """qcore's affine int4 kernel for a 2-D ``Int4Tensor`` on the CPU (its weights, not a copy of W)."""
    if weight.dim() != 2 or weight.act_pre_scale is not None or weight.activation_dtype != torch.bfloat16:
        return None
    group = weight.block_size[-1]
    return int4.affine_int4_weight(unpack_int4(weight.qdata), weight.scale.float().t(), None, group, OPS,
                                   fallback_dtype=torch.bfloat16, scaled_zeros=scaled_zeros(weight))
