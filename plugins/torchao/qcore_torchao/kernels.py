"""CPU decode kernels for torchao weights where torchao's own CPU path is slower than float.

torchao 0.18 on CPU runs ``Int8Tensor`` weight-only linears (``Int8WeightOnlyConfig``) and
``IntxUnpackedToInt8Tensor`` int4 linears (``IntxWeightOnlyConfig(weight_dtype=torch.int4)``)
by converting the whole weight to float on every call: for a decode step (a few rows of
activations) that is slower than the float model. For up to ``max_rows`` rows these kernels
run the *same stored weights* on torch's packed CPU matmuls instead:

- int8, one scale per output row, zero point 0: ``aten._weight_int8pack_mm`` reads torchao's
  int8 ``qdata`` as it is (no copy); the float32 row scales are applied to its output.
- int4 per group (group 32/64/128/256), any zero point: ``aten._weight_int4pack_mm_for_cpu`` on a
  packed copy (``N * K / 2`` bytes) made once per layer, kept out of the checkpoint.

Numerics: in torch 2.13 both kernels are vectorized for bfloat16 activations only (float32
input runs ~15x slower than bfloat16 here, float16 too), so the activations are rounded to
bfloat16 and the products accumulated in float32 inside the kernel, output rounded to bfloat16
(measured relative error against a float64 product: 0.3%, below int8 weight rounding's ~0.5%);
int4's scales and zero terms are bfloat16 too. Above ``max_rows`` rows (prefill), with
gradients, and for every other config, torchao's own path runs unchanged.
"""

from __future__ import annotations

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)


class Int8RowwiseCpu:
    """``y = x @ (qdata * scale).T`` with int8 ``qdata`` (N, K) and float ``scale`` (N, 1), zero point 0."""

    max_rows = 8  # measured: 8 rows still 1.3x faster than float32 (the kernel is a GEMV, linear in the rows)

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor) -> None:
        self.qdata = qdata.contiguous()
        self.scale = scale.reshape(-1).float().contiguous()  # (N,), applied in float32 after the kernel
        self.ones = torch.ones(qdata.shape[0], dtype=torch.bfloat16)  # the kernel takes bfloat16 scales only

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) float32/bfloat16/float16 -> (..., N) in x's dtype."""
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qdata, self.ones) * self.scale  # bfloat16 * float32 -> float32
        return y.reshape(*x.shape[:-1], self.qdata.shape[0]).to(x.dtype)


class Int4GroupedCpu:
    """``y = x @ W.T`` with ``W[n, k] = scale[n, k // g] * (qdata[n, k] - zero_point[n, k // g])``.

    ``qdata`` int8 (N, K) in [-8, 7] (torchao's int4 stored one value per byte), ``scale`` float
    and ``zero_point`` int8, both (N, K // g). torch's kernel computes ``(u - 8) * s + z`` for
    unsigned codes ``u = qdata + 8``, so its zero term is ``-scale * zero_point``.
    """

    max_rows = 8

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int) -> None:
        self.out_features, self.in_features = qdata.shape
        self.group_size = group_size
        codes = (qdata.to(torch.int32) + 8).contiguous()  # (N, K) in [0, 15]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        s = scale.float()
        zero = -s * zero_point.float()
        self.scales_and_zeros = torch.stack([s.T, zero.T], dim=-1).to(torch.bfloat16).contiguous()  # (K // g, N, 2)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) float32/bfloat16/float16 -> (..., N) in x's dtype."""
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def cpu_kernel_for(weight: torch.Tensor) -> Int8RowwiseCpu | Int4GroupedCpu | None:
    """The decode kernel for a torchao weight on the CPU, or None where torchao's own path is kept."""
    if weight.device.type != "cpu":
        return None
    kind = type(weight).__name__
    n, k = weight.shape
    if kind == "Int8Tensor" and _int8_weight_only(weight) and hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return Int8RowwiseCpu(weight.qdata, weight.scale)
    if kind == "IntxUnpackedToInt8Tensor" and weight.target_dtype == torch.int4 and weight.activation_quantization is None:
        group = weight.block_size[-1]
        if (list(weight.block_size) == [1, group] and group in INT4_GROUP_SIZES and k % group == 0
                and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")):
            return Int4GroupedCpu(weight.qdata, weight.scale, weight.zero_point, group)
    return None


def _int8_weight_only(weight: torch.Tensor) -> bool:
    """Per-row int8 weights with a zero zero-point and no activation quantization."""
    if weight.act_quant_kwargs is not None or getattr(weight, "act_pre_scale", None) is not None:
        return False
    if list(weight.block_size) != [1, weight.shape[1]] or weight.scale.numel() != weight.shape[0]:
        return False
    zero_point = getattr(weight, "zero_point", None)
    return zero_point is None or not bool(zero_point.any())
