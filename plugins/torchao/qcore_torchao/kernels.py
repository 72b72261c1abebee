"""CPU decode kernels for torchao weights where torchao's own CPU path is slower than float.

torchao 0.18 on CPU runs ``Int8Tensor`` weight-only linears (``Int8WeightOnlyConfig``) and
``IntxUnpackedToInt8Tensor`` int4 linears (``IntxWeightOnlyConfig(weight_dtype=torch.int4)``)
by converting the whole weight to float on every call: for a decode step (a few rows of
activations) that is slower than the float model. For up to ``DECODE_ROWS`` rows these kernels
run the *same stored weights* on this package's compiled kernels (qcore's shared ``lut4.h``,
``torch.ops.qcore_torchao.*``, through :mod:`qcore.int4`) instead:

- int8, one scale per output row, zero point 0: the int8 GEMV (``int8_gemm``) reads torchao's int8
  ``qdata`` as it is (no copy); float32 activations, float32 accumulation, the row scales applied in
  float32 (:class:`qcore.int4.Int8RowWeight`).
- int8 weights with int8 dynamic activations (``Int8DynamicActivationInt8WeightConfig``: symmetric per-row
  activations, float32 x): x quantized per row exactly as torchao does it (scale ``max|x| / 127.5``,
  ``round(x * (1 / scale))`` clamped to [-128, 127]), the integer-valued x through the same int8 GEMV
  (float32 accumulation of integer products: exact while partial sums stay below 2^24), times the row
  scales of x and W (:class:`Int8DynamicWeight`).
- float8_e4m3fn weights, one scale per row (``Float8WeightOnlyConfig``): the FP8 GEMV (qcore's shared
  ``fp8.h``, ``fp8_gemv``) decodes e4m3 inside the product, float32 activations and accumulation
  (:class:`Fp8RowWeight`); torchao's CPU path converts the whole weight to float on every call.
- int4 per group, any zero point: ``W = s * (qdata - zp) = s * (u - (zp + 8))`` with codes
  ``u = qdata + 8`` in 0..15, on the lookup GEMV (:class:`qcore.int4.Int4LutWeight`), float32;
  the repacked nibbles (``N * K / 2`` bytes) are made once per layer and kept out of the checkpoint.

Without the binary: torch's ``_weight_int8pack_mm`` (through the same op) and
``_weight_int4pack_mm_for_cpu`` in bfloat16 (torch's kernels are vectorized for bfloat16 only).
Above ``DECODE_ROWS`` rows (prefill), with gradients, and for every other config, torchao's own path
runs unchanged.
"""

from __future__ import annotations

import torch

from qcore import int4

from . import int4_plain
from .ops import FP8_OPS, OPS

DECODE_ROWS = 8  # at most this many rows of x run on these kernels; more run torchao's own path


def int4_kernel(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                group_size: int) -> int4.Int4LutWeight | int4.Int4PackWeight | None:
    """``qdata`` int8 (N, K) in [-8, 7] (torchao's int4 stored one value per byte), ``scale`` float and
    ``zero_point`` integer-valued, both (N, K // g)."""
    codes = (qdata.to(torch.int16) + 8).to(torch.uint8)
    return int4.affine_int4_weight(codes, scale.float(), zero_point.float() + 8, group_size, OPS,
                                   fallback_dtype=torch.bfloat16)


def cpu_kernel_for(weight: torch.Tensor) -> (int4.Int8RowWeight | int4.Int4LutWeight | int4.Int4PackWeight | Fp8RowWeight
                                              | Int8DynamicWeight | None):
    """The decode kernel for a torchao weight on the CPU, or None where torchao's own path is kept."""
    if weight.device.type != "cpu":
        return None
    kind = type(weight).__name__
    n, k = weight.shape
    if kind == "Int8Tensor" and _int8_per_row(weight) and weight.qdata.dtype == torch.int8:
        if weight.act_quant_kwargs is None:
            return int4.Int8RowWeight(weight.qdata, weight.scale, OPS)
        if _symmetric_dynamic_per_row(weight):
            return Int8DynamicWeight(weight.qdata, weight.scale)
    if (kind == "Float8Tensor" and weight.qdata.dtype == torch.float8_e4m3fn and weight.act_quant_kwargs is None
            and list(weight.block_size) == [1, k] and weight.scale.numel() == n and weight.dtype == torch.float32):
        return Fp8RowWeight(weight.qdata, weight.scale)
    if kind == "Int4Tensor":
        return int4_plain.cpu_kernel(weight)
    if kind == "IntxUnpackedToInt8Tensor" and weight.target_dtype == torch.int4 and weight.activation_quantization is None:
        group = weight.block_size[-1]
        if list(weight.block_size) == [1, group] and k % group == 0:
            return int4_kernel(weight.qdata, weight.scale, weight.zero_point, group)
    return None


class Fp8RowWeight:
    """torchao's float8_e4m3fn weight with one float32 scale per row, on the FP8 GEMV for float32 activations
    (``matmul`` returns None for other dtypes: the caller then runs torchao's path). ``qdata`` is torchao's own
    tensor (no copy)."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor) -> None:
        self.qdata = qdata.contiguous()
        self.out_features, self.in_features = qdata.shape
        self.scale = scale.reshape(self.out_features, 1).float().contiguous()

    def matmul(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.dtype is not torch.float32:
            return None
        y = FP8_OPS["fp8_gemv"](x.reshape(-1, self.in_features).contiguous(), self.qdata, self.scale, 1,
                                self.in_features)
        return y.view(*x.shape[:-1], self.out_features)


class Int8DynamicWeight:
    """torchao's int8 x int8 linear (``Int8DynamicActivationInt8WeightConfig``) for float32 activations: x
    quantized per row as torchao's ``Int8Tensor.from_hp`` does (symmetric, float32 eps), then the int8
    GEMV on the integer-valued x, then the two row scales. ``matmul`` returns None for other dtypes (the
    caller then runs torchao's path)."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor) -> None:
        self.int8 = int4.Int8RowWeight(qdata, scale, OPS)
        self.out_features = self.int8.out_features

    def matmul(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.dtype is not torch.float32:
            return None
        x2 = x.reshape(-1, x.shape[-1])
        # choose_qparams_affine's SYMMETRIC int8: max(-min(x, 0), max(x, 0)) / ((127 - -128) / 2), at least eps
        amax = torch.maximum(x2.amin(-1, keepdim=True).neg().clamp(min=0), x2.amax(-1, keepdim=True).clamp(min=0))
        x_scale = (amax / 127.5).clamp(min=_EPS)
        q = torch.round(x2 * (1.0 / x_scale)).clamp(-128, 127)  # quantize_affine's arithmetic, kept in float32
        y = self.int8.matmul(q).mul_(x_scale)
        return y.view(*x.shape[:-1], self.out_features)


_EPS = torch.finfo(torch.float32).eps


def _symmetric_dynamic_per_row(weight: torch.Tensor) -> bool:
    """Dynamic (no static scale) symmetric per-row int8 activations, no pre-scale, full range, float32 model."""
    from torchao.quantization import MappingType, PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

    kwargs = weight.act_quant_kwargs
    return (type(kwargs) is QuantizeTensorToInt8Kwargs and kwargs.mapping_type == MappingType.SYMMETRIC
            and isinstance(kwargs.granularity, PerRow) and not kwargs.reduce_range
            and getattr(weight, "act_quant_scale", None) is None and getattr(weight, "act_pre_scale", None) is None
            and weight.dtype == torch.float32)


def _int8_per_row(weight: torch.Tensor) -> bool:
    """Per-row int8 weights with a zero zero-point and no activation pre-scale."""
    if getattr(weight, "act_pre_scale", None) is not None:
        return False
    if list(weight.block_size) != [1, weight.shape[1]] or weight.scale.numel() != weight.shape[0]:
        return False
    zero_point = getattr(weight, "zero_point", None)
    return zero_point is None or not bool(zero_point.any())
