"""Hook implementations of qcore-plugin-hqq."""

from __future__ import annotations

import qcore
from qcore.errors import CheckpointError, TensorMismatchError

from .config import HqqConfig


@qcore.hookimpl
def qcore_register_methods():
    return [HqqConfig]


def _preset(nbits: int, group_size: int) -> dict:
    return HqqConfig(nbits=nbits, group_size=group_size).to_dict()


@qcore.hookimpl
def qcore_presets():
    return {
        "hqq-4bit-g64": _preset(4, 64),
        "hqq-4bit-g128": _preset(4, 128),
        "hqq-3bit-g64": _preset(3, 64),
        "hqq-2bit-g16": _preset(2, 16),
        "hqq-8bit-g128": _preset(8, 128),
    }


@qcore.hookimpl
def process_before_weight_loading(model, modules):
    import torch

    from qcore.modules import replace_module

    from .linear import HqqLinear

    for name in modules:
        linear = model.get_submodule(name)
        dtype = linear.weight.dtype if linear.weight.dtype.is_floating_point else torch.float32
        new = HqqLinear(linear.in_features, linear.out_features, linear.bias is not None, dtype, device="meta")
        replace_module(model, name, new)


def effective_group_size(config: HqqConfig, out_features: int, in_features: int) -> int:
    """hqq's HQQLinear: group_size None is one group per row (axis 1) or per column (axis 0)."""
    return config.group_size or (in_features if config.axis == 1 else out_features)


@qcore.hookimpl
def validate_environment(model, modules):
    from .format import check_grouping

    for name, cfg in modules.items():
        linear = model.get_submodule(name)
        if cfg.channel_wise:
            group_size = effective_group_size(cfg, linear.out_features, linear.in_features)
            check_grouping(name, (linear.out_features, linear.in_features), group_size, cfg.axis, cfg.nbits)


@qcore.hookimpl
def create_quantized_param(module_name, module, tensors, config, device, pre_quantized, dtype):
    from . import format, quantizer
    from .bitpack import pack

    module.compute_dtype = dtype

    # hqq's own save_to_safetensors writes no quantization_config: its tensors speak for themselves
    if pre_quantized or "W_q" in tensors:
        W_q, scale, zero, meta = format.read_layer(module_name, tensors, module.out_features, module.in_features)
    else:
        if "weight" not in tensors:
            raise CheckpointError(f"{module_name}: the float checkpoint has no 'weight' for this layer")
        weight = tensors["weight"]
        shape = (module.out_features, module.in_features)
        if tuple(weight.shape) != shape or not weight.dtype.is_floating_point:
            raise TensorMismatchError(f"{module_name}: float weight is {weight.dtype} {list(weight.shape)}, expected {list(shape)}")
        group_size = effective_group_size(config, module.out_features, module.in_features)
        if config.channel_wise:
            format.check_grouping(module_name, shape, group_size, config.axis, config.nbits)
        meta = format.HqqMeta(
            nbits=config.nbits, group_size=group_size, axis=config.axis, shape=shape, channel_wise=config.channel_wise,
            optimize=config.optimize, round_zero=config.round_zero, view_as_float=config.view_as_float,
            compute_dtype=str(module.compute_dtype).removeprefix("torch."),
        )
        q = quantizer.quantize(weight, config.nbits, group_size, config.axis, config.optimize, config.round_zero,
                               config.channel_wise)
        W_q = pack(q.W_q, meta.packing)
        scale, zero = q.scale.to(module.compute_dtype), q.zero.to(module.compute_dtype)
    bias = tensors.get("bias")
    if module.bias is not None and bias is None:
        raise CheckpointError(f"{module_name}: the checkpoint has no 'bias' for this layer")
    module.set_quantized(W_q, scale, zero, meta, bias, device)
    return True


@qcore.hookimpl
def process_after_weight_loading(model):
    from qcore.int4 import decode_float_linears

    from .ops import OPS

    decode_float_linears(model, OPS)  # the float head's decode on the float32 GEMV


@qcore.hookimpl
def module_state_dict(module):
    return module.hqq_tensors()


@qcore.hookimpl
def dequantize(module):
    from qcore.modules import linear_from_weight

    weight = module.dequantized_weight(module.compute_dtype)
    return linear_from_weight(weight, None if module.bias is None else module.bias.data.clone())


@qcore.hookimpl
def is_trainable():
    return True
