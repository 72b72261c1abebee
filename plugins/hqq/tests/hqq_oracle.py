"""The hqq library as the tests' oracle (never imported by the plugin)."""

from __future__ import annotations

import contextlib
import io

import torch


def hqq_quantize(weight: torch.Tensor, nbits: int, group_size: int, axis: int, round_zero: bool,
                 optimize: bool = True, bitpack: bool = False):
    """hqq's Quantizer.quantize on the CPU: (W_q, meta)."""
    from hqq.core.quantize import Quantizer

    return Quantizer.quantize(weight, nbits=nbits, channel_wise=True, group_size=group_size, optimize=optimize,
                              round_zero=round_zero, axis=axis, bitpack=bitpack, device="cpu")


def hqq_linear(linear: torch.nn.Linear, nbits: int, group_size: int, axis: int = 1,
               compute_dtype: torch.dtype = torch.float32):
    """An HQQLinear quantized by hqq on the CPU, with its base config (round_zero for 4-bit)."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    with contextlib.redirect_stdout(io.StringIO()):
        return HQQLinear(linear, BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis),
                         compute_dtype=compute_dtype, device="cpu", del_orig=False)


def hqq_linear_from_tensors(tensors: dict[str, torch.Tensor], compute_dtype: torch.dtype = torch.float32):
    """An HQQLinear rebuilt by hqq from one layer's checkpoint tensors (its load_state_dict)."""
    from hqq.core.quantize import HQQLinear

    layer = HQQLinear(None, None, compute_dtype=compute_dtype, device="cpu", initialize=False)
    layer.load_state_dict({k: v.clone() for k, v in tensors.items()})
    return layer
