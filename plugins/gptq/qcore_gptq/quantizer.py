"""Per-row asymmetric/symmetric uniform quantization of one group of columns (GPTQ's quantizer)."""

from __future__ import annotations

import torch


def group_params(w: torch.Tensor, bits: int, sym: bool, min_zero: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point per row of ``w`` (out, cols), as the GPTQ reference computes them.

    :param min_zero: smallest zero point allowed (1 for the v1 format, which stores zero-1).
    :returns: float32 scale ``(out,)`` and int64 zero ``(out,)``.
    """
    maxq = (1 << bits) - 1
    xmin = torch.minimum(w.min(dim=1).values, torch.zeros(()))
    xmax = torch.maximum(w.max(dim=1).values, torch.zeros(()))
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(both_zero, -1.0, xmin), torch.where(both_zero, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2, dtype=torch.int64)
    else:
        zero = torch.round(-xmin / scale).to(torch.int64).clamp(min_zero, maxq)
    return scale, zero


def quantize_columns(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes of ``w`` (out, cols) or (out,) for per-row ``scale``/``zero``: clamp(round(w/s) + z, 0, maxq)."""
    if w.dim() == 2:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq).to(torch.int64)


def dequantize_columns(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    if q.dim() == 2:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    return scale * (q - zero)
