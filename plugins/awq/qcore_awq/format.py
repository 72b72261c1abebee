"""The AutoAWQ checkpoint layouts (transformers, AutoAWQ and vLLM read GEMM).

For a linear layer with ``in`` inputs, ``out`` outputs and ``G = in / group_size`` groups, the
dequantized weight is ``W[o, i] = scales[g, o] * (q[i, o] - zeros[g, o])`` with ``g = i // group_size``.

GEMM ("version": "gemm")::

    qweight  int32 (in, out / 8)   8 codes per word along the output dimension, in AWQ's order:
                                   word j holds columns 8j + [0, 2, 4, 6, 1, 3, 5, 7] at bits 0, 4, ... 28
    qzeros   int32 (G, out / 8)    zero points, packed the same way
    scales   float16 (G, out)

GEMV ("version": "gemv")::

    qweight  int32 (out, in / 8)   8 codes per word along the input dimension, in natural order
    qzeros   int32 (out, Z)        zero points along the groups, natural order, zero-padded to Z words
    scales   float16 (out, 8 * Z)  zero-padded likewise; Z = AutoAWQ's calculate_zeros_width(in, group_size)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcore.errors import CheckpointError
from qcore.packing import pack_int32, unpack_int32

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # column of the 8-column block stored at nibble k
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # nibble that holds column k


@dataclass
class AWQTensors:
    """One layer in layout-free form: codes (in, out) uint8, zeros (G, out) uint8, scales (G, out) float16."""

    codes: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor


def pack_awq_order(values: torch.Tensor) -> torch.Tensor:
    """(rows, cols) 4-bit values -> int32 (rows, cols / 8) in AWQ's nibble order."""
    rows, cols = values.shape
    permuted = values.reshape(rows, cols // 8, 8)[..., list(AWQ_ORDER)].reshape(rows, cols)
    return pack_int32(permuted, 4, dim=1)


def unpack_awq_order(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_awq_order`: int32 (rows, cols / 8) -> uint8 (rows, cols)."""
    values = unpack_int32(packed, 4, dim=1)
    rows, cols = values.shape
    return values.reshape(rows, cols // 8, 8)[..., list(AWQ_REVERSE_ORDER)].reshape(rows, cols)


def gemv_zeros_width(in_features: int, group_size: int) -> int:
    """Words per row of a GEMV ``qzeros`` (AutoAWQ's calculate_zeros_width)."""
    multiplier = 1 if group_size >= 128 else {64: 2, 32: 4}.get(group_size)
    if multiplier is None:
        raise ValueError(f"the GEMV layout supports group sizes 32, 64 and >= 128, not {group_size}")
    words = -(-(in_features // group_size) // 8)
    return -(-words // multiplier) * multiplier


def to_tensors(layer: AWQTensors, layout: str) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (qweight, qzeros, scales) of one layer in ``layout`` ("gemm" or "gemv")."""
    in_features, out_features = layer.codes.shape
    groups = layer.scales.shape[0]
    if layout == "gemm":
        return {"qweight": pack_awq_order(layer.codes), "qzeros": pack_awq_order(layer.zeros),
                "scales": layer.scales.to(torch.float16).contiguous()}
    width = gemv_zeros_width(in_features, in_features // groups)
    zeros = torch.zeros(out_features, width * 8, dtype=torch.uint8)
    zeros[:, :groups] = layer.zeros.T
    scales = torch.zeros(out_features, width * 8, dtype=torch.float16)
    scales[:, :groups] = layer.scales.T
    return {"qweight": pack_int32(layer.codes.T.contiguous(), 4, dim=1), "qzeros": pack_int32(zeros, 4, dim=1),
            "scales": scales}


def from_tensors(module_name: str, tensors: dict[str, torch.Tensor], layout: str, in_features: int, out_features: int,
                 group_size: int) -> AWQTensors:
    """Check one layer's checkpoint tensors against the config and decode them."""
    for key in ("qweight", "qzeros", "scales"):
        if key not in tensors:
            raise CheckpointError(f"{module_name}: AWQ checkpoint lacks '{key}'")
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    groups = in_features // group_size
    for key, tensor in (("qweight", qweight), ("qzeros", qzeros)):
        if tensor.dtype != torch.int32:
            raise CheckpointError(f"{module_name}: {key} is {tensor.dtype}, the AWQ layouts store int32 words")
    if not scales.dtype.is_floating_point:
        raise CheckpointError(f"{module_name}: scales is {scales.dtype}, the AWQ layouts store float16 scales")
    expected = _expected_shapes(layout, in_features, out_features, group_size)
    actual = {"qweight": tuple(qweight.shape), "qzeros": tuple(qzeros.shape), "scales": tuple(scales.shape)}
    if actual != expected:
        other = "gemv" if layout == "gemm" else "gemm"
        hint = ""
        try:
            if actual == _expected_shapes(other, in_features, out_features, group_size):
                hint = f"; these are the shapes of the {other.upper()} layout: set \"version\": \"{other}\" in config.json"
        except ValueError:
            pass
        if not hint:
            hint = (f"; does config.json give the right group_size ({group_size}) and version ({layout!r})? "
                    f"a ({out_features}, {in_features}) layer needs {expected}")
        raise CheckpointError(f"{module_name}: {layout.upper()} tensors have shapes {actual}, which do not fit{hint}")
    if layout == "gemm":
        codes, zeros, scales_go = unpack_awq_order(qweight), unpack_awq_order(qzeros), scales
    else:
        codes = unpack_int32(qweight, 4, dim=1).T.contiguous()
        zeros = unpack_int32(qzeros, 4, dim=1)[:, :groups].T.contiguous()
        scales_go = scales[:, :groups].T.contiguous()
    return AWQTensors(codes.contiguous(), zeros.contiguous(), scales_go.to(torch.float16).contiguous())


def _expected_shapes(layout: str, in_features: int, out_features: int, group_size: int) -> dict[str, tuple[int, int]]:
    groups = in_features // group_size
    if layout == "gemm":
        return {"qweight": (in_features, out_features // 8), "qzeros": (groups, out_features // 8),
                "scales": (groups, out_features)}
    width = gemv_zeros_width(in_features, group_size)
    return {"qweight": (out_features, in_features // 8), "qzeros": (out_features, width), "scales": (out_features, width * 8)}
