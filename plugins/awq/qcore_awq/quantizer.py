"""AWQ's asymmetric min/max 4-bit quantizer, per group of ``group_size`` input columns."""

from __future__ import annotations

import torch

from .format import AWQTensors

MAX_INT = 15  # 4-bit codes 0..15


def pseudo_quantize(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Quantize and dequantize ``w`` as AutoAWQ's ``pseudo_quantize_tensor`` (zero point, 4 bits).

    :param w: float tensor whose last dimension is a multiple of ``group_size``; every run of
        ``group_size`` values along it is one group.
    :returns: the dequantized tensor, same shape and dtype.
    """
    groups = w.reshape(-1, group_size)
    max_val = groups.amax(dim=1, keepdim=True)
    min_val = groups.amin(dim=1, keepdim=True)
    scales = (max_val - min_val).clamp(min=1e-5) / MAX_INT
    zeros = (-torch.round(min_val / scales)).clamp_(0, MAX_INT)
    return ((torch.clamp(torch.round(groups / scales) + zeros, 0, MAX_INT) - zeros) * scales).reshape(w.shape)


def quantize_weight(weight: torch.Tensor, group_size: int) -> AWQTensors:
    """Codes, zero points and float16 scales of a float weight (out, in).

    The min/max rule of :func:`pseudo_quantize`, with the scale rounded to float16 first (as it is
    stored) so that the codes are the best for the stored scale.

    :returns: codes uint8 (in, out), zeros uint8 (G, out), scales float16 (G, out).
    """
    out_features, in_features = weight.shape
    groups = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    max_val, min_val = groups.amax(dim=2), groups.amin(dim=2)
    scales = ((max_val - min_val).clamp(min=1e-5) / MAX_INT).to(torch.float16)
    s = scales.float()
    zeros = (-torch.round(min_val / s)).clamp(0, MAX_INT)
    codes = torch.clamp(torch.round(groups / s.unsqueeze(2)) + zeros.unsqueeze(2), 0, MAX_INT)
    return AWQTensors(codes.reshape(out_features, in_features).T.to(torch.uint8).contiguous(),
                      zeros.T.to(torch.uint8).contiguous(), scales.T.contiguous())
