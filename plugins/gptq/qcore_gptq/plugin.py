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
    from qcore.int4 import decode_float_linears

    from .linear import GPTQQuantLinear
    from .ops import OPS

    for module in model.modules():
        if isinstance(module, GPTQQuantLinear):
            module.prepare_fast_path()
    decode_float_linears(model, OPS)  # the float head's decode on the float32 GEMV


# --- calibration --------------------------------------------------------------------------
# The states of the linears the driver is calibrating together (one true-sequential group). Linears
# whose Hessians came from the same inputs (q/k/v, gate/up) are solved as one stacked weight: GPTQ
# treats rows independently given H, so this gives each the codes it would get alone, in one pass.
_group: list[dict] = []
_group_closed = False  # set by the group's first quantize_calibrated: the next calibration_init starts a new group


@qcore.hookimpl
def calibration_init(module, config):
    import torch

    global _group_closed
    if _group_closed:
        _group.clear()
        _group_closed = False
    state = {"H": torch.zeros(module.in_features, module.in_features, dtype=torch.float32, device=module.weight.device),
             "n": 0, "module": module, "config": config, "sources": []}
    _group.append(state)
    return state


@qcore.hookimpl
def calibration_add_batch(state, inputs):
    """H = 2/n * sum over samples of x x^T, accumulated as a running mean (the GPTQ reference), in float32."""
    from qcore.calibration import phase

    from .hessian import shared_gram

    with phase("hessian"):
        batch = inputs.shape[0] if inputs.dim() > 2 else 1
        state["H"] *= state["n"] / (state["n"] + batch)
        state["n"] += batch
        product, source = shared_gram(inputs)
        state["H"].add_(product, alpha=2 / state["n"])
        state["sources"].append(source)


def _solve_together(state: dict, config: GPTQConfig) -> None:
    """Run GPTQ for ``state``'s linear and every pending linear of its group with the same Hessian
    (same inputs, config, width, dtype and device); leaves each one's rows in its state's ``result``."""
    import torch

    from .gptq import gptq_quantize, split_rows

    weight = state["module"].weight
    members = [state] + [
        s for s in _group
        if s is not state and "result" not in s and s["sources"] == state["sources"] and s["config"] == config
        and s["module"].weight.shape[1] == weight.shape[1] and s["module"].weight.dtype == weight.dtype
        and s["module"].weight.device == weight.device
    ]
    weights = [s["module"].weight for s in members]
    result = gptq_quantize(torch.cat(weights) if len(weights) > 1 else weight, state["H"], config.bits,
                           config.group_size, config.sym, config.desc_act, config.damp_percent, config.static_groups,
                           min_zero=_min_zero(config), act_group_aware=config.act_group_aware)
    for member, rows in zip(members, split_rows(result, [w.shape[0] for w in weights]), strict=True):
        member["result"] = rows
        member["H"] = None


@qcore.hookimpl
def quantize_calibrated(module_name, module, state, config):
    from qcore.calibration import phase

    from .hessian import forget_gram

    global _group_closed
    _group_closed = True
    forget_gram()
    _check_packable(module_name, module, config)
    if "result" not in state:
        state["module"] = module
        with phase("solve"):
            _solve_together(state, config)
    result = state.pop("result")
    if state in _group:
        _group.remove(state)
    with phase("pack"):
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
