"""Hook implementations of qcore-plugin-gptq."""

from __future__ import annotations

from typing import TYPE_CHECKING

import qcore
from qcore.errors import CheckpointError, ConfigError, TensorMismatchError

from .config import GPTQConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .linear import GPTQQuantLinear



@qcore.hookimpl
def qcore_register_methods():
    return [GPTQConfig]


@qcore.hookimpl
def qcore_presets():
    base = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
    return {
        "gptq-w4g128": base,
        "gptq-w4g128-act": {**base, "desc_act": True},
        "gptq-w8": {**base, "bits": 8, "group_size": -1},
    }


def _new_module(linear: nn.Module, config: GPTQConfig, device: str = "meta") -> GPTQQuantLinear:
    from .linear import GPTQQuantLinear

    return GPTQQuantLinear(linear.in_features, linear.out_features, linear.bias is not None, config.bits, config.group_size, device)


@qcore.hookimpl
def validate_environment(model, modules):
    for name, cfg in modules.items():
        _check_packable(name, model.get_submodule(name), cfg)


@qcore.hookimpl
def process_before_weight_loading(model, modules):
    from qcore.modules import replace_module

    for name, cfg in modules.items():
        replace_module(model, name, _new_module(model.get_submodule(name), cfg))


def _check_packable(name: str, linear: nn.Module, config: GPTQConfig) -> None:
    for what, size in (("in_features", linear.in_features), ("out_features", linear.out_features)):
        if size * config.bits % 32:
            raise ConfigError(
                f"{name}: {what}={size} at {config.bits} bits does not fill whole int32 words, which the GPTQ "
                f"format needs; leave it in float with modules_to_not_convert=[{name!r}] or choose other bits"
            )


def _min_zero(config: GPTQConfig) -> int:
    return 1 if config.checkpoint_format == "gptq" and not config.sym else 0


def _fill(module: GPTQQuantLinear, result, config: GPTQConfig, bias: torch.Tensor | None) -> None:
    from .format import to_tensors

    packed = to_tensors(result, config.bits, config.checkpoint_format)
    module.set_tensors(packed["qweight"], result.zeros, packed["scales"], result.g_idx, bias)


@qcore.hookimpl
def create_quantized_param(module_name, module, tensors, config, device, pre_quantized, dtype):
    from qcore.modules import expect_tensor

    from .format import from_tensors
    from .gptq import rtn_quantize

    if module.bias is not None and "bias" not in tensors:
        raise CheckpointError(f"{module_name}: checkpoint has no 'bias' for this layer")
    bias = tensors.get("bias")
    if bias is not None:
        bias = expect_tensor(module_name, "bias", bias, "float", (module.out_features,)).to(dtype)
    if pre_quantized:
        qweight, zeros, scales, g_idx = from_tensors(module_name, tensors, config.bits, module.in_features,
                                                     module.out_features, config.checkpoint_format)
        module.set_tensors(qweight, zeros, scales, g_idx, bias)
    else:  # a float checkpoint without data: round-to-nearest in the GPTQ format
        weight = tensors.get("weight")
        if weight is None or tuple(weight.shape) != (module.out_features, module.in_features):
            raise TensorMismatchError(f"{module_name}: expected a float weight of shape [{module.out_features}, {module.in_features}]")
        _fill(module, rtn_quantize(weight, config.bits, config.group_size, config.sym, _min_zero(config)), config, bias)
    module.to(device)
    return True


@qcore.hookimpl
def process_after_weight_loading(model):
    from .linear import GPTQQuantLinear

    for module in model.modules():
        if isinstance(module, GPTQQuantLinear):
            module.prepare_fast_path()


# --- calibration --------------------------------------------------------------------------
@qcore.hookimpl
def calibration_init(module):
    import torch

    return {"H": torch.zeros(module.in_features, module.in_features, dtype=torch.float32, device=module.weight.device), "n": 0}


@qcore.hookimpl
def calibration_add_batch(state, inputs):
    """H = 2/n * sum over samples of x x^T, accumulated as a running mean (the GPTQ reference)."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    batch = inputs.shape[0] if inputs.dim() > 2 else 1
    state["H"] *= state["n"] / (state["n"] + batch)
    state["n"] += batch
    x = x * (2 / state["n"]) ** 0.5
    state["H"] += x.T @ x


@qcore.hookimpl
def quantize_calibrated(module_name, module, state, config):
    from .gptq import gptq_quantize

    _check_packable(module_name, module, config)
    result = gptq_quantize(module.weight, state["H"], config.bits, config.group_size, config.sym, config.desc_act,
                           config.damp_percent, config.static_groups, min_zero=_min_zero(config),
                           act_group_aware=config.act_group_aware)
    new = _new_module(module, config, device="cpu")
    _fill(new, result, config, None if module.bias is None else module.bias.detach().clone())
    new.prepare_fast_path()
    return new.to(module.weight.device)


# --- saving, dequantizing -------------------------------------------------------------------
@qcore.hookimpl
def module_state_dict(module, config):
    import torch

    from .format import pack_qzeros

    out = {"qweight": module.qweight, "qzeros": pack_qzeros(module.zeros, config.bits, config.checkpoint_format),
           "scales": module.scales,
           "g_idx": module.g_idx.to(torch.int32)}
    if module.bias is not None:
        out["bias"] = module.bias.data
    return out


@qcore.hookimpl
def dequantize(module):
    from qcore.modules import linear_from_weight

    return linear_from_weight(module.dequantized_weight(), None if module.bias is None else module.bias.data.float())
