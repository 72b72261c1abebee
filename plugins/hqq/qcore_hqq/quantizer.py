"""HQQ's quantizer, written to give bit-identical results to hqq 0.2.8 (``hqq/core/quantize.py``,
``hqq/core/optimize.py``) on the CPU, in float32.

1. Group the weight: ``axis=1`` views it as ``(numel / group_size, group_size)`` (consecutive
   weights of a row), ``axis=0`` as ``(group_size, numel / group_size)``.
2. Min/max init, with the inverse scale (hqq quantizes as ``W * scale + zero``):
   ``scale = (2^nbits - 1) / (max - min)`` (1 where ``|max - min| <= 1e-4``, at most 2e4),
   ``zero = -min * scale``, rounded when ``round_zero``.
3. The half-quadratic proximal solver on the zero point (hqq's default,
   ``optimize_weights_proximal_legacy``): with ``W_r = (W_q - zero) / scale`` the dequantized
   weight, ``W_e = shrink_lp(W - W_r)`` the sparse error (lp norm 0.7, beta 10) and
   ``zero = mean(W_q - (W - W_e) * scale)`` over the group, for at most 20 iterations; it
   stops at the first iteration whose error ``mean |W - W_r|`` does not improve (keeping the
   zero that iteration computed, as hqq does).
4. ``W_q = clamp(round(W * scale + zero))``; the stored scale is ``1 / scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LP_NORM = 0.7
BETA = 1e1
ITERS = 20


@dataclass
class QuantizedWeight:
    """HQQ's result for one weight: ``W ≈ (W_q - zero) * scale``, all in the grouped layout.

    - ``W_q``: float32 codes in ``[0, 2^nbits - 1]``, shape ``(numel/g, g)`` (axis 1) or ``(g, numel/g)`` (axis 0).
    - ``scale``, ``zero``: float32, ``(numel/g, 1)`` (axis 1) or ``(1, numel/g)`` (axis 0); scalars when not channel-wise.
    """

    W_q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor


def shrink_lp(x: torch.Tensor, beta: float, lp_norm: float) -> torch.Tensor:
    """The generalized soft-thresholding operator: ``sign(x) * relu(|x| - |x|^(p-1) / beta)``."""
    out = torch.abs(x)
    out.sub_((1.0 / beta) * out.pow(lp_norm - 1)).clamp_min_(0.0)
    out.mul_(torch.sign(x))
    return out


def optimize_zero(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, max_v: int, axis: int,
                  lp_norm: float = LP_NORM, beta: float = BETA, iters: int = ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """The proximal solver: float32 grouped weight and init (scale, zero) -> (final W_q, zero).

    The same operations as hqq's, in the same order (so the same float32 roundings), written
    into reused buffers: four weight-sized tensors instead of a dozen fresh ones per iteration.
    """
    best_error = torch.tensor(torch.inf, dtype=torch.float32)
    W_q, W_r, W_e, tmp = (torch.empty_like(W) for _ in range(4))
    for _ in range(iters):
        torch.mul(W, scale, out=W_q).add_(zero).round_().clamp_(0, max_v)  # W_q = round(W * s + z)
        torch.sub(W_q, zero, out=W_r).div_(scale)  # W_r = (W_q - z) / s
        torch.sub(W, W_r, out=tmp)  # W - W_r
        # W_e = shrink_lp(W - W_r): sign(x) * relu(|x| - |x|^(p-1) / beta)
        torch.abs(tmp, out=W_e)
        W_e.sub_(torch.pow(W_e, lp_norm - 1, out=W_r).mul_(1.0 / beta))  # W_r is free from here
        W_e.clamp_min_(0.0).mul_(torch.sign(tmp))
        error = torch.abs(tmp, out=tmp).mean().float()  # mean |W - W_r|
        torch.sub(W, W_e, out=tmp).mul_(scale)  # (W - W_e) * s
        zero = torch.mean(torch.sub(W_q, tmp, out=tmp), axis=axis, keepdim=True)
        if error < best_error:
            best_error = error
        else:
            break
    return torch.round(W * scale + zero).clamp_(0, max_v), zero


def grouped(weight: torch.Tensor, group_size: int, axis: int) -> torch.Tensor:
    """float (out, in) -> float32 grouped view: ``(numel/g, g)`` for axis 1, ``(g, numel/g)`` for axis 0."""
    W = weight.float()
    return W.reshape([-1, group_size]) if axis == 1 else W.reshape([group_size, -1])


def quantize(weight: torch.Tensor, nbits: int, group_size: int, axis: int = 1, optimize: bool = True,
             round_zero: bool = False, channel_wise: bool = True) -> QuantizedWeight:
    """HQQ-quantize a float weight (out, in); ``group_size`` must divide ``weight.numel()``."""
    W = grouped(weight, group_size, axis) if channel_wise else weight.float()
    if channel_wise:
        w_min = W.min(axis=axis, keepdim=True)[0]
        w_max = W.max(axis=axis, keepdim=True)[0]
    else:
        w_min, w_max = W.min(), W.max()
        optimize = False
    max_v = round(2**nbits - 1)
    denom = w_max - w_min
    scale = max_v / denom
    scale = torch.where(denom.abs() <= 1e-4, torch.full_like(scale, 1.0), scale)
    scale = scale.clamp(max=2e4)
    zero = -w_min * scale
    if round_zero:
        zero = torch.round(zero)
    if optimize:
        W_q, zero = optimize_zero(W, scale, zero, max_v, axis)
    else:
        W_q = (W * scale + zero).round_().clamp_(0, max_v)
    return QuantizedWeight(W_q, 1.0 / scale, zero)
