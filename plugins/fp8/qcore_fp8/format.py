"""Reading one module's tensors from a fine-grained FP8 checkpoint, with checks that name the module."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcore.errors import CheckpointError, TensorMismatchError

from .kernels import FP8_DTYPE, scale_grid, scales_to_float32

# Names other FP8 checkpoints give the block scales (transformers renames them on load too):
# DeepSeek-V4-Flash writes `<module>.scale`, Mistral Large 3 `<module>.qscale_weight`.
SCALE_NAMES = ("weight_scale_inv", "scale", "qscale_weight")
FLOAT_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
UE8M0_SCALE_DTYPES = (torch.float8_e8m0fnu, torch.uint8, torch.float32)  # DeepSeek-V3.1 writes powers of two in float32


@dataclass
class Fp8ModuleTensors:
    weight: torch.Tensor  # float8_e4m3fn (out, in)
    scale_inv: torch.Tensor  # as stored: float32 (ceil(out/bn), ceil(in/bk)) / e8m0 / a scalar per tensor
    scale_name: str
    block_size: tuple[int, int] | None
    activation_scale: torch.Tensor | None


def read_fp8_module(module_name: str, tensors: dict[str, torch.Tensor], out_features: int, in_features: int,
                    block_size: tuple[int, int] | None, scale_fmt: str, static_activations: bool) -> Fp8ModuleTensors:
    """Check and return one FP8 linear's tensors (``tensors``: names relative to the module)."""
    known = {"weight", "bias", "activation_scale", *SCALE_NAMES}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise CheckpointError(
            f"{module_name}: unexpected tensors {unknown} for a fine-grained FP8 layer (it stores weight, "
            "weight_scale_inv, optionally activation_scale and bias); is quant_method right in config.json?"
        )
    if "weight" not in tensors:
        raise CheckpointError(f"{module_name}: the checkpoint has no 'weight' for this FP8 layer")
    scale_names = [n for n in SCALE_NAMES if n in tensors]
    if not scale_names:
        raise CheckpointError(f"{module_name}: the checkpoint lacks 'weight_scale_inv' (the FP8 block scales) for this layer")
    if len(scale_names) > 1:
        raise CheckpointError(f"{module_name}: the checkpoint holds two scale tensors {scale_names}; keep one")
    weight, scale_name = tensors["weight"], scale_names[0]
    scale_inv = tensors[scale_name]
    _check_weight(module_name, weight, out_features, in_features)
    _check_scale_dtype(module_name, scale_name, scale_inv, scale_fmt)
    block = _block_of(module_name, scale_name, tuple(scale_inv.shape), (out_features, in_features), block_size)
    _check_scale_values(module_name, scale_name, scale_inv)
    activation_scale = tensors.get("activation_scale")
    if static_activations and activation_scale is None:
        raise CheckpointError(f"{module_name}: activation_scheme is 'static' but the checkpoint has no 'activation_scale'")
    if activation_scale is not None and activation_scale.numel() != 1:
        raise TensorMismatchError(f"{module_name}.activation_scale has shape {list(activation_scale.shape)}; expected a scalar")
    return Fp8ModuleTensors(weight, scale_inv, scale_name, block, activation_scale)


def _check_weight(module_name: str, weight: torch.Tensor, out_features: int, in_features: int) -> None:
    if weight.dtype != FP8_DTYPE:
        kind = "float8 dtype" if "float8" in str(weight.dtype) else "dtype"
        raise TensorMismatchError(
            f"{module_name}.weight is {weight.dtype}, a {kind} the fp8 config does not name: fine-grained FP8 "
            "stores float8_e4m3fn weights. Convert the checkpoint, or load its float version and quantize on the fly"
        )
    if tuple(weight.shape) != (out_features, in_features):
        raise TensorMismatchError(
            f"{module_name}.weight has shape {list(weight.shape)}, expected [{out_features}, {in_features}] (out, in)"
        )
    codes = weight.view(torch.uint8)
    if bool(((codes & 0x7F) == 0x7F).any()):  # e4m3fn has no Inf; S.1111.111 is NaN
        raise CheckpointError(f"{module_name}.weight holds float8 NaN codes: the checkpoint is corrupt")


def _check_scale_dtype(module_name: str, scale_name: str, scale_inv: torch.Tensor, scale_fmt: str) -> None:
    allowed = UE8M0_SCALE_DTYPES if scale_fmt == "ue8m0" else FLOAT_SCALE_DTYPES
    if scale_inv.dtype not in allowed:
        hint = " (set scale_fmt='ue8m0' in quantization_config)" if scale_inv.dtype in UE8M0_SCALE_DTYPES[:2] else ""
        raise TensorMismatchError(
            f"{module_name}.{scale_name} is {scale_inv.dtype}, which scale_fmt={scale_fmt!r} does not name; "
            f"expected one of {[str(d).removeprefix('torch.') for d in allowed]}{hint}"
        )


def _block_of(module_name: str, scale_name: str, grid: tuple[int, ...], shape: tuple[int, int],
              block_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The block size of this module's scales: the config's, whose ceil-division grid (DeepSeek, vLLM) they must have.

    Any other grid is an error, even one that would divide the weight with another block size: reading
    it so is how transformers dequantizes edge blocks wrongly, and a checkpoint that disagrees with its
    config is broken either way.
    """
    if block_size is None:
        if len(grid) <= 2 and all(g == 1 for g in grid):
            return None
        raise TensorMismatchError(
            f"{module_name}.{scale_name} has shape {list(grid)}, but weight_block_size is null (one scale per "
            "tensor): expected a scalar. Set weight_block_size to the checkpoint's block size"
        )
    expected = scale_grid(shape, block_size)
    if grid != expected:
        raise TensorMismatchError(
            f"{module_name}.{scale_name} has shape {list(grid)}; a {list(shape)} weight with weight_block_size="
            f"{list(block_size)} needs {list(expected)} (ceil division). The checkpoint does not fit its "
            "config: check weight_block_size"
        )
    return block_size


def _check_scale_values(module_name: str, scale_name: str, scale_inv: torch.Tensor) -> None:
    values = scales_to_float32(scale_inv)
    if not bool(torch.isfinite(values).all()) or bool((values <= 0).any()):
        raise CheckpointError(
            f"{module_name}.{scale_name} holds non-finite or non-positive scales: the checkpoint is corrupt"
        )
