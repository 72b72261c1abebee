"""Hook implementations of qcore-plugin-torchao."""

from __future__ import annotations

import qcore
from qcore.errors import CheckpointError, ConfigError, TensorMismatchError

from .config import TorchAoConfig

_PER_ROW = {"_type": "PerRow", "_version": 1, "_data": {"dim": -1}}
# what torchao 0.18's config_to_dict writes for each config (tests check these against torchao)
PRESETS = {
    "torchao-int8wo": {"_type": "Int8WeightOnlyConfig", "_version": 2,
                       "_data": {"group_size": None, "granularity": _PER_ROW, "set_inductor_config": True}},
    "torchao-fp8wo": {"_type": "Float8WeightOnlyConfig", "_version": 2,
                      "_data": {"weight_dtype": {"_type": "torch.dtype", "_data": "float8_e4m3fn"},
                                "set_inductor_config": True, "granularity": _PER_ROW}},
    "torchao-int8dq": {"_type": "Int8DynamicActivationInt8WeightConfig", "_version": 2,
                       "_data": {"act_mapping_type": {"_type": "MappingType", "_data": "SYMMETRIC"},
                                 "weight_only_decode": False, "granularity": _PER_ROW,
                                 "set_inductor_config": True, "reduce_range": False}},
    "torchao-intx4-g32": {"_type": "IntxWeightOnlyConfig", "_version": 2,
                          "_data": {"weight_dtype": {"_type": "torch.dtype", "_data": "int4"},
                                    "granularity": {"_type": "PerGroup", "_version": 1, "_data": {"group_size": 32}},
                                    "mapping_type": {"_type": "MappingType", "_data": "SYMMETRIC"},
                                    "scale_dtype": None,
                                    "intx_packing_format": {"_type": "IntxPackingFormat", "_data": "UNPACKED_TO_INT8"},
                                    "intx_choose_qparams_algorithm": {"_type": "IntxChooseQParamsAlgorithm", "_data": "AFFINE"}}},
    # plain packing (Int4Tensor): made and run on a CPU by qcore_torchao.int4_plain; groups of 64 divide SmolLM2's 576
    "torchao-int4wo-g64": {"_type": "Int4WeightOnlyConfig", "_version": 2,
                           "_data": {"group_size": 64, "set_inductor_config": True,
                                     "int4_packing_format": {"_type": "Int4PackingFormat", "_data": "PLAIN"},
                                     "int4_choose_qparams_algorithm": {"_type": "Int4ChooseQParamsAlgorithm",
                                                                       "_data": "TINYGEMM"},
                                     "int4_tile_packed_ntile": 8}},
}
_METADATA_ATTR = "_qcore_torchao_metadata"


@qcore.hookimpl
def qcore_register_methods():
    return [TorchAoConfig]


@qcore.hookimpl
def qcore_presets():
    return {name: {"quant_method": "torchao", "quant_type": {"default": quant_type}} for name, quant_type in PRESETS.items()}


@qcore.hookimpl
def validate_environment(config, device_map, model, modules):
    from . import aoconfig
    from .quantize import template_weight

    aoconfig.require_torchao()
    kind = _device_kind(device_map)
    for name in {cfg.type_name for cfg in modules.values()} | {config.type_name}:
        aoconfig.check_device(name, kind)
    for name, cfg in modules.items():  # every layer must hold the config's layout (e.g. group size | in_features)
        linear = model.get_submodule(name)
        template_weight(name, linear, cfg, linear.weight.dtype)


def _device_kind(device_map) -> str:
    """'cuda' when the device map puts anything on a CUDA device, else 'cpu'."""
    import torch

    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) or str(value).startswith("cuda"):
            return "cuda"
        if value == "auto" and torch.cuda.is_available():
            return "cuda"
    return "cpu"


@qcore.hookimpl
def process_before_weight_loading(model, modules, pre_quantized, metadata):
    from qcore.modules import replace_module

    from .linear import TorchAoLinear

    for name in modules:
        linear = model.get_submodule(name)
        new = TorchAoLinear(linear.in_features, linear.out_features, linear.bias is not None, device="meta",
                            dtype=linear.weight.dtype)
        replace_module(model, name, new)
    if pre_quantized:
        object.__setattr__(model, _METADATA_ATTR, metadata or None)


@qcore.hookimpl
def create_quantized_param(model, module_name, module, tensors, config, device, pre_quantized, dtype):
    from torch import nn

    from .quantize import load_weight, quantize_weight

    if pre_quantized:
        weight = load_weight(module_name, module, tensors, config, getattr(model, _METADATA_ATTR, None), dtype)
    else:
        if "weight" not in tensors:
            raise CheckpointError(f"{module_name}: the float checkpoint has no 'weight' for this layer")
        weight = quantize_weight(module_name, module, tensors["weight"], config, dtype)
    if module.bias is not None:
        if "bias" not in tensors:
            raise CheckpointError(f"{module_name}: checkpoint has no 'bias' for this layer")
        bias = tensors["bias"]
        if tuple(bias.shape) != (module.out_features,):
            raise TensorMismatchError(f"{module_name}.bias has shape {list(bias.shape)}, expected [{module.out_features}]")
        module.bias = nn.Parameter(bias.to(device, dtype), requires_grad=False)
    elif "bias" in tensors:
        raise CheckpointError(f"{module_name}: checkpoint has a 'bias' but this layer has none")
    module.set_weight(weight.to(device))
    return True


@qcore.hookimpl
def process_after_weight_loading(model):
    from qcore.int4 import decode_float_linears

    from .ops import OPS

    if _METADATA_ATTR in model.__dict__:
        object.__delattr__(model, _METADATA_ATTR)
    decode_float_linears(model, OPS)  # the float head's decode on the float32 GEMV


@qcore.hookimpl
def module_state_dict(module):
    from .format import flatten_weight

    tensors = flatten_weight(module.weight)
    if module.bias is not None:
        tensors["bias"] = module.bias
    return tensors


@qcore.hookimpl
def checkpoint_metadata(model, tensors):
    """torchao's per-tensor JSON in the safetensors header, as transformers + torchao write it."""
    from qcore.modules import get_module

    from .format import checkpoint_metadata as torchao_metadata

    weights = {f"{name}.weight": get_module(model, name).weight for name in getattr(model, "qcore_modules", {})}
    return torchao_metadata(tensors, weights)


@qcore.hookimpl
def dequantize(module):
    from qcore.modules import linear_from_weight

    from .linear import TorchAoLinear

    if not isinstance(module, TorchAoLinear):
        raise ConfigError(f"qcore-plugin-torchao cannot dequantize a {type(module).__name__}")
    if type(module.weight).__name__ == "Int4Tensor":  # torchao's Int4Tensor has no dequantize
        from .int4_plain import dequantize as dequantize_int4

        weight = dequantize_int4(module.weight)
    else:
        weight = module.weight.dequantize().to(module.weight.dtype)  # the torchao weight's dtype is the compute dtype
    return linear_from_weight(weight, None if module.bias is None else module.bias.data)
