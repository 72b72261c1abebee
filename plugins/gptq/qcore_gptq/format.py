"""The GPTQ checkpoint layout (transformers / optimum / gptqmodel / vLLM read it).

For a linear layer with ``in`` inputs, ``out`` outputs, ``G = ceil(in / group_size)`` groups::

    qweight  int32 (in * bits / 32, out)   codes packed along the input dimension (bit stream, LSB first)
    qzeros   int32 (G, out * bits / 32)    zero points packed along the output dimension;
                                           v1 ("gptq") stores zero - 1, v2 ("gptq_v2") stores zero
    scales   float16 (G, out)
    g_idx    int32 (in,)                   group of every input column (i // group_size without act-order)
    bias     (out,)                        optional

Dequantized weight: ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``.
"""

from __future__ import annotations

import torch

from qcore.errors import CheckpointError
from qcore.modules import expect_tensor
from qcore.packing import pack_int32, unpack_int32

from .gptq import GPTQResult


def pack_qzeros(zeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    """Zero points (G, out) -> the ``qzeros`` tensor; v1 ("gptq") stores zero - 1."""
    stored = zeros.to(torch.int64) - (1 if checkpoint_format == "gptq" else 0)
    if int(stored.min()) < 0:
        raise ValueError("a zero point of 0 cannot be stored in the v1 format; quantize with min_zero=1")
    return pack_int32(stored, bits, dim=1)


def to_tensors(result: GPTQResult, bits: int, checkpoint_format: str) -> dict[str, torch.Tensor]:
    """Pack a layer's codes and parameters into checkpoint tensors."""
    return {
        "qweight": pack_int32(result.q.T.contiguous(), bits, dim=0),
        "qzeros": pack_qzeros(result.zeros, bits, checkpoint_format),
        "scales": result.scales.to(torch.float16),
        "g_idx": result.g_idx.to(torch.int32),
    }


def from_tensors(module_name: str, tensors: dict[str, torch.Tensor], bits: int, in_features: int, out_features: int,
                 checkpoint_format: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check a layer's checkpoint tensors; returns (qweight, zeros int32 (G, out), scales, g_idx)."""
    for key in ("qweight", "qzeros", "scales"):
        if key not in tensors:
            raise CheckpointError(f"{module_name}: GPTQ checkpoint lacks '{key}'")
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    expect_tensor(module_name, "qzeros", qzeros, (torch.int32,))
    expect_tensor(module_name, "scales", scales, "float")
    if not bool(torch.isfinite(scales).all()):
        raise CheckpointError(f"{module_name}.scales holds NaN/Inf; the checkpoint is damaged")
    if qweight.dtype != torch.int32 or tuple(qweight.shape) != (in_features * bits // 32, out_features):
        raise CheckpointError(
            f"{module_name}: qweight is {qweight.dtype} {list(qweight.shape)}, but {bits}-bit weights of a "
            f"({out_features}, {in_features}) layer need int32 [{in_features * bits // 32}, {out_features}]; "
            "does config.json give the right bits?"
        )
    groups = scales.shape[0] if scales.dim() == 2 else 0
    if scales.dim() != 2 or scales.shape[1] != out_features or tuple(qzeros.shape) != (groups, out_features * bits // 32):
        raise CheckpointError(
            f"{module_name}: scales {list(scales.shape)} / qzeros {list(qzeros.shape)} do not fit {out_features} outputs "
            f"at {bits} bits"
        )
    g_idx = tensors.get("g_idx")
    if g_idx is None:
        g_idx = torch.arange(in_features) * groups // in_features  # no g_idx: contiguous, equal groups
    expect_tensor(module_name, "g_idx", g_idx, "integer")
    if g_idx.dim() != 1 or g_idx.numel() != in_features:
        raise CheckpointError(f"{module_name}: g_idx has {g_idx.numel()} entries, expected one per input ({in_features})")
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
        raise CheckpointError(f"{module_name}: g_idx names groups outside 0..{groups - 1}")
    zeros = unpack_int32(qzeros, bits, out_features, dim=1).to(torch.int32)
    if checkpoint_format == "gptq":
        zeros = zeros + 1  # v1 stores zero - 1
    return qweight, zeros, scales, g_idx.to(torch.int64)
