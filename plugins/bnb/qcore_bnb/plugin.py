"""Hook implementations of qcore-plugin-bnb."""

from __future__ import annotations

from typing import TYPE_CHECKING

import qcore
from qcore.errors import CheckpointError, TensorMismatchError

from .config import BnbConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .linear import Linear4bit, Linear8bitLt


BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256


@qcore.hookimpl
def qcore_register_methods():
    return [BnbConfig]


@qcore.hookimpl
def qcore_presets():
    return {
        "bnb-nf4": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"},
        "bnb-fp4": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                    "bnb_4bit_compute_dtype": "float32"},
        "bnb-int8": {"quant_method": "bitsandbytes", "load_in_8bit": True},
    }


@qcore.hookimpl
def process_before_weight_loading(model, modules):
    from qcore.modules import replace_module

    from .linear import Linear4bit, Linear8bitLt

    for name, cfg in modules.items():
        linear = model.get_submodule(name)
        bias = linear.bias is not None
        if cfg.load_in_4bit:
            new = Linear4bit(linear.in_features, linear.out_features, bias, cfg.compute_dtype)
        else:
            new = Linear8bitLt(linear.in_features, linear.out_features, bias, cfg.llm_int8_threshold)
        replace_module(model, name, new)


@qcore.hookimpl
def create_quantized_param(module_name, module, tensors, config, device, pre_quantized, dtype):
    from torch import nn

    from qcore.modules import expect_tensor

    from .format import checkpoint_kind
    from .linear import Linear4bit

    kind = checkpoint_kind(module_name, tensors) if pre_quantized else "float"
    if "weight" not in tensors:
        raise CheckpointError(f"{module_name}: checkpoint has no 'weight' for this layer")
    expected = "4bit" if isinstance(module, Linear4bit) else "8bit"
    if pre_quantized and kind != expected:
        raise CheckpointError(
            f"{module_name}: the config says {expected} but the checkpoint holds {kind} tensors for this layer"
        )
    if isinstance(module, Linear4bit):
        _fill_4bit(module_name, module, tensors, config, pre_quantized)
    else:
        _fill_8bit(module_name, module, tensors, pre_quantized)
    if module.bias is not None:
        if "bias" not in tensors:
            raise CheckpointError(f"{module_name}: checkpoint has no 'bias' for this layer")
        bias = expect_tensor(module_name, "bias", tensors["bias"], "float", (module.out_features,))
        module.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    module.to(device)
    return True


def _check_float_weight(module_name: str, module: nn.Module, weight: torch.Tensor) -> None:
    if tuple(weight.shape) != (module.out_features, module.in_features) or not weight.dtype.is_floating_point:
        raise TensorMismatchError(
            f"{module_name}: float weight is {weight.dtype} {list(weight.shape)}, expected "
            f"[{module.out_features}, {module.in_features}] floating point"
        )


def _fill_4bit(module_name: str, module: Linear4bit, tensors: dict, config: BnbConfig, pre_quantized: bool) -> None:
    import torch

    from . import kernels
    from .format import QuantState4bit, read_quant_state

    if pre_quantized:
        state = read_quant_state(module_name, tensors, module.out_features, module.in_features)
        packed = tensors["weight"]
    else:
        weight = tensors["weight"]
        _check_float_weight(module_name, module, weight)
        quant_type = config.bnb_4bit_quant_type
        packed, absmax = kernels.quantize_4bit(weight, BLOCKSIZE, quant_type)
        state = QuantState4bit(quant_type, BLOCKSIZE, str(weight.dtype).removeprefix("torch."), tuple(weight.shape),
                               absmax, kernels.code_4bit(quant_type))
        if config.bnb_4bit_use_double_quant:
            offset = absmax.mean()
            state.absmax, state.nested_absmax = kernels.quantize_blockwise_8bit(absmax - offset, NESTED_BLOCKSIZE)
            state.nested_quant_map = kernels.dynamic_map_signed().clone()
            state.nested_blocksize, state.nested_dtype, state.nested_offset = NESTED_BLOCKSIZE, "float32", offset.item()
        if config.storage_dtype != torch.uint8:
            packed = packed.reshape(-1).view(config.storage_dtype).unsqueeze(1)
    module.set_state(packed, state)


def _fill_8bit(module_name: str, module: Linear8bitLt, tensors: dict, pre_quantized: bool) -> None:
    import torch

    from qcore.modules import expect_tensor

    from . import kernels

    if pre_quantized:
        if "SCB" not in tensors:
            raise CheckpointError(f"{module_name}: 8-bit checkpoint lacks 'SCB' (the row scales)")
        q = expect_tensor(module_name, "weight", tensors["weight"], (torch.int8,), (module.out_features, module.in_features))
        scb = expect_tensor(module_name, "SCB", tensors["SCB"], "float", (module.out_features,)).float()
        if "weight_format" in tensors:
            expect_tensor(module_name, "weight_format", tensors["weight_format"], "integer", ())
        if not bool(torch.isfinite(scb).all()):
            raise CheckpointError(f"{module_name}.SCB holds NaN/Inf row scales; the checkpoint is damaged")
    else:
        _check_float_weight(module_name, module, tensors["weight"])
        q, scb = kernels.int8_rowwise_quantize(tensors["weight"])
    module.weight, module.SCB = q, scb


@qcore.hookimpl
def process_after_weight_loading(model):
    from qcore.int4 import decode_float_linears

    from .ops import OPS

    decode_float_linears(model, OPS)  # the float head's decode on the float32 GEMV


@qcore.hookimpl
def module_state_dict(module):
    return module.checkpoint_tensors()


@qcore.hookimpl
def dequantize(module):
    import torch

    from qcore.modules import linear_from_weight

    return linear_from_weight(module.dequantized_weight(torch.float32), None if module.bias is None else module.bias.data.float())


@qcore.hookimpl
def is_trainable():
    return True
