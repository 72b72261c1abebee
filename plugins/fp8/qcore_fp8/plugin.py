"""Hook implementations of qcore-plugin-fp8."""

from __future__ import annotations

import qcore
from qcore.errors import CheckpointError, ConfigError, TensorMismatchError

from .config import Fp8Config


@qcore.hookimpl
def qcore_register_methods():
    return [Fp8Config]


@qcore.hookimpl
def qcore_presets():
    return {
        "fp8-block128": {"quant_method": "fp8", "weight_block_size": [128, 128]},
        "fp8-block128-ue8m0": {"quant_method": "fp8", "weight_block_size": [128, 128], "scale_fmt": "ue8m0"},
        "fp8-per-tensor": {"quant_method": "fp8", "weight_block_size": None},
    }


@qcore.hookimpl
def validate_environment(config):
    if config.dequantize:
        raise ConfigError(
            "dequantize=True (load FP8 weights as float) is not a loading option in qcore: qcore keeps FP8 weights "
            "in memory and runs them on every device. Load with dequantize=false, then call qcore.dequantize(model)"
        )
    if config.modules_to_convert:
        raise ConfigError(
            f"modules_to_convert={config.modules_to_convert!r}: FP8 embedding tables are not supported by "
            "qcore-plugin-fp8 (only nn.Linear layers convert); remove the key"
        )


@qcore.hookimpl
def process_before_weight_loading(model, modules, pre_quantized):
    from qcore.modules import replace_module

    from .linear import Fp8Linear

    for name, cfg in modules.items():
        if cfg.activation_scheme == "static" and not pre_quantized:
            raise ConfigError(
                "activation_scheme='static' needs activation scales measured on data; qcore quantizes FP8 weights "
                "on the fly without data, so use activation_scheme='dynamic'"
            )
        linear = model.get_submodule(name)
        replace_module(model, name, Fp8Linear(
            linear.in_features, linear.out_features, linear.bias is not None, cfg.block_size, cfg.scale_fmt,
            cfg.activation_scheme, compute_dtype=linear.weight.dtype, device="meta",
        ))


@qcore.hookimpl
def create_quantized_param(module_name, module, tensors, config, device, pre_quantized, dtype):
    import torch
    from torch import nn

    from . import kernels
    from .format import read_fp8_module

    module.compute_dtype = dtype
    if pre_quantized:
        read = read_fp8_module(module_name, tensors, module.out_features, module.in_features, config.block_size,
                               config.scale_fmt, config.activation_scheme == "static")
        module.weight, module.weight_scale_inv = read.weight.to(device), read.scale_inv.to(device)
        module.block_size, module.scale_name = read.block_size, read.scale_name
        if read.activation_scale is not None:
            module.activation_scale = read.activation_scale.to(device)
    else:
        if "weight" not in tensors:
            raise CheckpointError(f"{module_name}: the checkpoint has no 'weight' for this layer")
        weight = tensors["weight"]
        if weight.dtype.itemsize == 1:
            raise TensorMismatchError(
                f"{module_name}: weight is already {weight.dtype}; this checkpoint's config.json has no "
                "quantization_config: add the FP8 checkpoint's quantization_config instead of quantizing again"
            )
        if tuple(weight.shape) != (module.out_features, module.in_features) or not weight.dtype.is_floating_point:
            raise TensorMismatchError(
                f"{module_name}.weight is {weight.dtype} {list(weight.shape)}, expected a float "
                f"[{module.out_features}, {module.in_features}] weight to quantize (is the checkpoint already quantized?)"
            )
        q, scale_inv = kernels.quantize_blockwise(weight.to(device), config.block_size, config.scale_fmt,
                                                  name=f"{module_name}.weight")
        # ue8m0: the powers of two are kept as float32, as DeepSeek-V3.1 ships them (qcore's checkpoint
        # reader does not read safetensors' F8_E8M0 yet); transformers and vLLM read both.
        module.weight, module.weight_scale_inv = q, scale_inv.to(torch.float32)
    if module.bias is not None:
        if "bias" not in tensors:
            raise CheckpointError(f"{module_name}: the checkpoint has no 'bias' for this layer")
        bias = tensors["bias"]
        if tuple(bias.shape) != (module.out_features,) or not bias.dtype.is_floating_point or bias.dtype.itemsize == 1:
            raise TensorMismatchError(
                f"{module_name}.bias is {bias.dtype} {list(bias.shape)}, expected a float [{module.out_features}] bias"
            )
        module.bias = nn.Parameter(bias.to(device, module.compute_dtype), requires_grad=False)
    elif "bias" in tensors:
        raise TensorMismatchError(f"{module_name}: the checkpoint has a bias but the model's layer has none")
    return True


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
    from qcore.modules import linear_from_weight

    return linear_from_weight(module.dequantized_weight(), None if module.bias is None else module.bias.data)


@qcore.hookimpl
def is_trainable():
    # Gradients flow to the input (and so to adapters such as LoRA) through the dequantized weight;
    # the FP8 weights themselves are frozen buffers.
    return True
