"""The hooks of the example plugin: every one a plugin needs, nothing more."""

import torch
from torch import nn

import qcore
from qcore.errors import CheckpointError
from qcore.modules import linear_from_weight, replace_module

from .config import ExampleInt8Config
from .linear import Int8Linear, quantize_per_channel


@qcore.hookimpl
def qcore_register_methods():
    return [ExampleInt8Config]


@qcore.hookimpl
def qcore_presets():
    return {"example-int8": {"quant_method": "example_int8"}}


@qcore.hookimpl
def process_before_weight_loading(model, modules):
    for name in modules:
        linear = model.get_submodule(name)
        new = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        replace_module(model, name, new)


@qcore.hookimpl
def param_needs_quantization(module):
    return isinstance(module, Int8Linear)


@qcore.hookimpl
def create_quantized_param(module_name, module, tensors, device, pre_quantized):
    if pre_quantized:
        missing = {"weight", "weight_scale"} - tensors.keys()
        if missing:
            raise CheckpointError(f"{module_name}: checkpoint lacks {sorted(missing)} of this int8 module")
        q, scale = tensors["weight"], tensors["weight_scale"]
    else:
        q, scale = quantize_per_channel(tensors["weight"])
    if tuple(q.shape) != (module.out_features, module.in_features) or q.dtype != torch.int8:
        raise CheckpointError(
            f"{module_name}: weight is {q.dtype} {list(q.shape)}, expected int8 "
            f"{[module.out_features, module.in_features]}"
        )
    module.weight = q.to(device)
    module.weight_scale = scale.to(device, torch.float32)
    if module.bias is not None:
        module.bias = nn.Parameter(tensors["bias"].to(device), requires_grad=False)
    return True


@qcore.hookimpl
def dequantize(module):
    return linear_from_weight(module.dequantized_weight(), None if module.bias is None else module.bias.data)
