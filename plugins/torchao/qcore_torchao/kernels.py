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
from .ops import OPS

DECODE_ROWS = 8  # at most this many rows of x run on these kernels; more run torchao's own path


def int4_kernel(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                group_size: int) -> int4.Int4LutWeight | int4.Int4PackWeight | None:
    """``qdata`` int8 (N, K) in [-8, 7] (torchao's int4 stored one value per byte), ``scale`` float and
    ``zero_point`` integer-valued, both (N, K // g)."""
    codes = (qdata.to(torch.int16) + 8).to(torch.uint8)
    return int4.affine_int4_weight(codes, scale.float(), zero_point.float() + 8, group_size, OPS,
                                   fallback_dtype=torch.bfloat16)


def cpu_kernel_for(weight: torch.Tensor) -> int4.Int8RowWeight | int4.Int4LutWeight | int4.Int4PackWeight | None:
    """The decode kernel for a torchao weight on the CPU, or None where torchao's own path is kept."""
    if weight.device.type != "cpu":
        return None
    kind = type(weight).__name__
    n, k = weight.shape
    if kind == "Int8Tensor" and _int8_weight_only(weight) and weight.qdata.dtype == torch.int8:
        return int4.Int8RowWeight(weight.qdata, weight.scale, OPS)
    if kind == "Int4Tensor":
        return int4_plain.cpu_kernel(weight)
    if kind == "IntxUnpackedToInt8Tensor" and weight.target_dtype == torch.int4 and weight.activation_quantization is None:
        group = weight.block_size[-1]
        if list(weight.block_size) == [1, group] and k % group == 0:
            return int4_kernel(weight.qdata, weight.scale, weight.zero_point, group)
    return None


def _int8_weight_only(weight: torch.Tensor) -> bool:
    """Per-row int8 weights with a zero zero-point and no activation quantization."""
    if weight.act_quant_kwargs is not None or getattr(weight, "act_pre_scale", None) is not None:
        return False
    if list(weight.block_size) != [1, weight.shape[1]] or weight.scale.numel() != weight.shape[0]:
        return False
    zero_point = getattr(weight, "zero_point", None)
    return zero_point is None or not bool(zero_point.any())
