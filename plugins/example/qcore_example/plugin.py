"""The hooks of the example plugin: every one a plugin needs, nothing more.

Heavy imports (torch, the module class) live inside the hooks: `qcore plugins` imports this module
to list the plugin, and should not pay for torch.
"""

import qcore
from qcore.errors import CheckpointError

from .config import ExampleInt8Config


@qcore.hookimpl
def qcore_register_methods():
    return [ExampleInt8Config]


@qcore.hookimpl
def qcore_presets():
    return {"example-int8": {"quant_method": "example_int8"}}


@qcore.hookimpl
def process_before_weight_loading(model, modules):
    # `modules`: name -> effective config of every nn.Linear the targeting rules selected.
    # The model is a skeleton on the meta device: build the new modules there too.
    from qcore.modules import replace_module

    from .linear import Int8Linear

    for name in modules:
        linear = model.get_submodule(name)
        new = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        replace_module(model, name, new)


@qcore.hookimpl
def create_quantized_param(module_name, module, tensors, device, pre_quantized, dtype):
    # `tensors` holds ALL of this module's checkpoint tensors (even across shards),
    # named relative to the module: {"weight": ..., "weight_scale": ..., "bias": ...}.
    # `dtype` is the model's compute dtype (torch_dtype): float parts such as the bias use it.
    import torch
    from torch import nn

    from .linear import quantize_per_channel

    if pre_quantized:                         # a checkpoint we (or another tool) wrote
        missing = {"weight", "weight_scale"} - tensors.keys()
        if missing:
            raise CheckpointError(f"{module_name}: checkpoint lacks {sorted(missing)} of this int8 module")
        q, scale = tensors["weight"], tensors["weight_scale"]
    else:                                     # a float checkpoint, quantized on the fly
        q, scale = quantize_per_channel(tensors["weight"])
    # check every tensor against the format before using it: a wrong dtype or shape must not load
    out_features, in_features = module.out_features, module.in_features
    for name, tensor, want_dtype, want_shape in (("weight", q, torch.int8, (out_features, in_features)),
                                                 ("weight_scale", scale, torch.float32, (out_features,))):
        if tensor.dtype != want_dtype or tuple(tensor.shape) != want_shape:
            raise CheckpointError(f"{module_name}.{name} is {tensor.dtype} {list(tensor.shape)}, expected "
                                  f"{want_dtype} {list(want_shape)}")
    module.weight = q.to(device)
    module.weight_scale = scale.to(device)
    if module.bias is not None:
        bias = tensors.get("bias")
        if bias is None or tuple(bias.shape) != (out_features,):
            raise CheckpointError(f"{module_name}: checkpoint lacks a bias of shape [{out_features}]")
        module.bias = nn.Parameter(bias.to(device, dtype), requires_grad=False)
    return True                               # firstresult hook: anything non-None means "handled"

@qcore.hookimpl
def dequantize(module):
    from qcore.modules import linear_from_weight

    return linear_from_weight(module.dequantized_weight(), None if module.bias is None else module.bias.data)
