"""Hook implementations of qcore-plugin-awq."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import qcore
from qcore.errors import CheckpointError, ConfigError, TensorMismatchError

from .config import AWQConfig

if TYPE_CHECKING:
    from torch import nn


GROUP_SIZES = (32, 64, 128, 256)


@qcore.hookimpl
def qcore_register_methods():
    return [AWQConfig]


@qcore.hookimpl
def qcore_presets():
    base = {"quant_method": "awq", "bits": 4, "zero_point": True, "version": "gemm"}
    return {
        "awq-w4g128": {**base, "group_size": 128},
        "awq-w4g64": {**base, "group_size": 64},
        "awq-w4g64-gemv": {**base, "group_size": 64, "version": "gemv"},
    }


# --- checks that run before any tensor is loaded or any block is calibrated -------------------
def check_layers(layers: dict[str, tuple[int, int]], configs: dict[str, AWQConfig]) -> None:
    """ConfigError naming the first layer whose shape the AWQ layouts cannot hold, with what would work.

    :param layers: module name -> (in_features, out_features).
    """
    for name, (in_features, out_features) in layers.items():
        config = configs[name]
        group_size = config.group_size_for(in_features)
        if out_features % 8:
            raise ConfigError(
                f"{name}: out_features={out_features} is not a multiple of 8, which the AWQ layouts pack into int32 "
                f"words; leave it in float with modules_to_not_convert=[{name!r}]"
            )
        if in_features % group_size:
            working = [g for g in GROUP_SIZES if all(i % g == 0 for i, _ in layers.values())]
            advice = (f"group sizes that fit every layer: {', '.join(map(str, working))} (or -1, one group per row)"
                      if working else f"no common group size fits every layer; leave {name!r} out with modules_to_not_convert")
            raise ConfigError(f"{name}: in_features={in_features} is not a multiple of group_size={group_size}; {advice}")
        if config.layout == "gemv" and group_size < 128 and group_size not in (32, 64):
            raise ConfigError(f"{name}: the GEMV layout stores group sizes 32, 64 or >= 128, not {group_size}; use version='gemm'")


def _shapes(model: nn.Module, names: Any) -> dict[str, tuple[int, int]]:
    return {name: (model.get_submodule(name).in_features, model.get_submodule(name).out_features) for name in names}


@qcore.hookimpl
def validate_environment(model, modules):
    """Every layer's shape, and (for a live model about to be calibrated) the architecture's scaling map."""
    from .arch import scale_groups

    check_layers(_shapes(model, modules), modules)
    if any(p.device.type != "meta" for p in model.parameters()):  # a live model: qcore.quantize calibrates it next
        scale_groups(model)


@qcore.hookimpl
def process_before_weight_loading(model, modules):
    from qcore.modules import replace_module

    from .linear import AWQLinear

    for name, cfg in modules.items():
        linear = model.get_submodule(name)
        new = AWQLinear(linear.in_features, linear.out_features, linear.bias is not None, cfg.group_size_for(linear.in_features))
        replace_module(model, name, new)


@qcore.hookimpl
def create_quantized_param(module_name, module, tensors, config, device, pre_quantized, dtype):
    from .quantizer import quantize_weight

    if module.bias is not None and "bias" not in tensors:
        raise CheckpointError(f"{module_name}: checkpoint has no 'bias' for this layer")
    if pre_quantized:
        module.load(module_name, tensors, config.layout, dtype)
    else:  # a float checkpoint without data: AWQ's min/max quantizer, no scale search (round-to-nearest)
        weight = tensors.get("weight")
        if weight is None or tuple(weight.shape) != (module.out_features, module.in_features):
            raise TensorMismatchError(f"{module_name}: expected a float weight of shape [{module.out_features}, {module.in_features}]")
        module.set_layer(quantize_weight(weight, module.group_size), tensors.get("bias"), dtype)
    module.to(device)
    return True


@qcore.hookimpl
def process_after_weight_loading(model):
    from qcore.int4 import decode_float_linears

    from .linear import AWQLinear
    from .ops import OPS

    for module in model.modules():
        if isinstance(module, AWQLinear):
            module.prepare_fast_path()
    decode_float_linears(model, OPS)  # the float head's decode on the float32 GEMV


# --- calibration: the driver calls per linear, AWQ works per block (see block.py) -------------
_RUNS: dict[tuple[int, str], Any] = {}  # (id(model), block name) -> BlockRun of the block being calibrated
# id(effective config) -> the live model validate_environment saw it with: the calibration hooks get a
# linear and its config, not the model, and AWQ needs the linear's whole block
def _locate(model: nn.Module, module_name: str) -> tuple[str, nn.Module, str]:
    """(block name, block, name relative to the block) of a linear inside a decoder block."""
    from qcore.calibration import find_blocks

    blocks_name, blocks = find_blocks(model)
    rest = module_name[len(blocks_name) + 1:]
    index, _, relative = rest.partition(".")
    return f"{blocks_name}.{index}", blocks[int(index)], relative


@qcore.hookimpl
def calibration_init(module_name, config, model, modules):
    from .arch import active_groups, scale_groups
    from .block import BlockRun

    block_name, block, relative = _locate(model, module_name)
    key = (id(model), block_name)
    if key not in _RUNS or _RUNS[key].block is not block:
        inside = {n[len(block_name) + 1:]: cfg for n, cfg in modules.items() if n.startswith(block_name + ".")}
        sizes = {n: cfg.group_size_for(block.get_submodule(n).in_features) for n, cfg in inside.items()}
        _RUNS[key] = BlockRun(block, active_groups(block, scale_groups(model), set(inside)), sizes)
    return {"run": _RUNS[key], "key": key, "relative": relative}


@qcore.hookimpl
def calibration_add_batch(state, inputs):
    state["run"].add_batch(state["relative"], inputs)


@qcore.hookimpl
def quantize_calibrated(module_name, module, state, config):
    from .linear import AWQLinear

    run = state["run"]
    if run.quantized is None:
        run.quantized = run.run()
    layer = run.quantized.pop(state["relative"])
    if not run.quantized:
        _RUNS.pop(state["key"], None)
    new = AWQLinear(module.in_features, module.out_features, module.bias is not None,
                    config.group_size_for(module.in_features), "cpu")
    new.set_layer(layer, None if module.bias is None else module.bias.detach().cpu().clone(), module.weight.dtype)
    new.to(module.weight.device)
    new.prepare_fast_path()
    return new


# --- saving, dequantizing -------------------------------------------------------------------
@qcore.hookimpl
def module_state_dict(module, config):
    return module.tensors(config.layout)


@qcore.hookimpl
def dequantize(module):
    from qcore.modules import linear_from_weight

    return linear_from_weight(module.dequantized_weight(), None if module.bias is None else module.bias.data.float())

