"""The qcore hook contract: every hook a plugin may implement, in lifecycle order.

A plugin is a module (or object) whose functions carry the ``@qcore.hookimpl`` marker
and are named after the specs below. Implementations may accept fewer arguments than
the spec lists (pluggy passes only the ones asked for). A function named like no spec,
or asking for an argument the spec lacks, is rejected when the plugin is registered.

Routing: a plugin that registers methods (``qcore_register_methods``) is called only
for configs of those methods. A plugin that registers none is an *observer* and is
called for every config. Plugin code therefore never tests ``config.quant_method``.

The vocabulary follows Hugging Face transformers' ``HfQuantizer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from qcore.config import QuantizationConfig

hookspec = pluggy.HookspecMarker("qcore")
hookimpl = pluggy.HookimplMarker("qcore")


# =============================================================================
# Discovery
# =============================================================================
@hookspec
def qcore_register_methods() -> list[type[QuantizationConfig]]:
    """Return the QuantizationConfig subclasses this plugin serves.

    Called once, when the plugin is registered. Each class names its method in the
    class attribute ``quant_method`` (the ``quant_method`` of Hugging Face's
    config.json: "bitsandbytes", "gptq", ...). Return ``[]`` (or do not implement the
    hook) for an observer plugin that is called for every method.

    :returns: a list of QuantizationConfig subclasses.
    """


@hookspec
def qcore_presets() -> dict[str, dict[str, Any]]:
    """Return named, ready-made configs of this plugin's methods.

    Called once, when the plugin is registered. Presets are what ``qcore quantize
    --preset NAME``, the demo and the benchmarks use; names are global, so prefix them
    with the method ("bnb-nf4", "gptq-w4g128").

    :returns: preset name -> ``quantization_config`` dict (with ``quant_method``).
    """


# =============================================================================
# Before anything is allocated
# =============================================================================
@hookspec
def validate_environment(config: QuantizationConfig, device_map: Any) -> None:
    """Raise a clear error if this machine cannot run ``config``.

    Called first in load_quantized and quantize, before any tensor is allocated.
    Check optional dependencies, devices and option combinations here.

    :param config: the resolved quantization config.
    :param device_map: the device map as the user gave it (None, "cpu", "auto", a dict).
    :returns: nothing; raise ``qcore.errors.ConfigError`` (or a subclass of
        ``QcoreError``) to stop.
    """


@hookspec(firstresult=True)
def update_torch_dtype(config: QuantizationConfig, torch_dtype: torch.dtype | None) -> torch.dtype | None:
    """Choose the dtype of the parts of the model that stay in floating point.

    Called once per load, after validate_environment. Stops at first non-None result.

    :param config: the resolved quantization config.
    :param torch_dtype: the dtype the user asked for, or None.
    :returns: the dtype to use, or None to keep the user's (float32 when unset).
    """


@hookspec(firstresult=True)
def update_device_map(config: QuantizationConfig, device_map: Any) -> Any:
    """Adjust the device map before it is resolved (e.g. force "cpu" when no GPU kernel).

    Called once per load, after update_torch_dtype. Stops at first non-None result.

    :param config: the resolved quantization config.
    :param device_map: the device map as given (None, a device string, "auto", a dict).
    :returns: the device map to use, or None to keep it.
    """


@hookspec(firstresult=True)
def adjust_max_memory(config: QuantizationConfig, max_memory: dict[Any, int]) -> dict[Any, int] | None:
    """Adjust the per-device memory budget used to place modules for ``device_map="auto"``.

    Called once per load when a device map is inferred. Stops at first non-None result.

    :param config: the resolved quantization config.
    :param max_memory: bytes available per device, as accelerate computes it.
    :returns: the budget to use, or None to keep it.
    """


# =============================================================================
# Loading: skeleton, weights, finishing touches
# =============================================================================
@hookspec
def process_before_weight_loading(
    model: nn.Module,
    config: QuantizationConfig,
    modules: dict[str, QuantizationConfig],
    pre_quantized: bool,
) -> None:
    """Swap the targeted modules of the meta-device skeleton for the method's modules.

    Called once per load, on the skeleton whose parameters live on the ``meta``
    device, after targeting decided which modules convert. Use
    ``qcore.modules.replace_module(model, name, new_module)`` to swap.

    :param model: the skeleton (parameters on the meta device).
    :param config: the resolved quantization config (the model-wide one).
    :param modules: module name -> effective config of that module (per-module
        overrides applied), for every module that must be converted.
    :param pre_quantized: True when the checkpoint already holds quantized tensors,
        False when float weights will be quantized on the fly.
    :returns: nothing.
    """


@hookspec(firstresult=True)
def param_needs_quantization(
    model: nn.Module, param_name: str, module_name: str, module: nn.Module, config: QuantizationConfig
) -> bool | None:
    """Say whether a checkpoint tensor belongs to a quantized module.

    Called for every tensor name in the checkpoint whose owning module is known.
    Tensors answered True are grouped per module, across shards, and handed together
    to create_quantized_param; the others are copied into the skeleton as they are.
    Stops at first non-None result; None everywhere means False.

    :param model: the model being loaded.
    :param param_name: the full tensor name in the checkpoint (``...q_proj.weight.absmax``).
    :param module_name: the name of the module that owns it (``...q_proj``).
    :param module: that module (the method's module after process_before_weight_loading).
    :param config: that module's effective config.
    :returns: True to route the tensor to create_quantized_param.
    """


@hookspec(firstresult=True)
def create_quantized_param(
    model: nn.Module,
    module_name: str,
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    config: QuantizationConfig,
    device: torch.device,
    pre_quantized: bool,
) -> bool | None:
    """Build one quantized module's parameters from its checkpoint tensors.

    Called once per quantized module, when all its tensors have been read (they may
    come from several shards). Quantize here when ``pre_quantized`` is False. Raise
    ``qcore.errors.CheckpointError`` naming the module when a tensor is missing or
    does not fit. Stops at first non-None result.

    :param model: the model being loaded.
    :param module_name: the module's full name.
    :param module: the module to fill (the method's module).
    :param tensors: tensor name relative to the module (``weight``, ``weight.absmax``,
        ``qweight``, ``bias``...) -> tensor, on the CPU.
    :param config: the module's effective config.
    :param device: where the module's tensors must end up.
    :param pre_quantized: True for a quantized checkpoint, False for float weights.
    :returns: True once handled.
    """


@hookspec
def process_after_weight_loading(model: nn.Module, config: QuantizationConfig) -> None:
    """Finishing touches once every tensor is placed: repack for a kernel, tie, flags.

    Called once per load or quantize, after all tensors are loaded.

    :param model: the loaded model.
    :param config: the resolved quantization config.
    :returns: nothing.
    """


# =============================================================================
# Calibration (methods whose config has ``requires_calibration = True``)
# =============================================================================
@hookspec(firstresult=True)
def calibration_init(module_name: str, module: nn.Module, config: QuantizationConfig) -> Any:
    """Start collecting statistics for one float linear of the current block.

    Called by the calibration driver (qcore.calibration) before the calibration
    batches run through the block. Stops at first non-None result.

    :param module_name: the linear's full name.
    :param module: the float ``nn.Linear``.
    :param config: that module's effective config.
    :returns: any state object; it is handed back to calibration_add_batch and
        quantize_calibrated.
    """


@hookspec
def calibration_add_batch(
    module_name: str, module: nn.Module, state: Any, inputs: torch.Tensor, output: torch.Tensor,
    config: QuantizationConfig,
) -> None:
    """Accumulate statistics from one batch that went through ``module``.

    Called by the driver for each calibration batch, from a forward hook.

    :param module_name: the linear's full name.
    :param module: the float ``nn.Linear``.
    :param state: what calibration_init returned.
    :param inputs: the module's input, shape ``(..., in_features)``.
    :param output: the module's output, shape ``(..., out_features)``.
    :param config: that module's effective config.
    :returns: nothing.
    """


@hookspec(firstresult=True)
def quantize_calibrated(
    module_name: str, module: nn.Module, state: Any, config: QuantizationConfig
) -> nn.Module | None:
    """Quantize one linear from its collected statistics.

    Called by the driver once all batches ran for the linear's group. The driver swaps
    the returned module in, then recomputes the block's outputs with it. Stops at first
    non-None result.

    :param module_name: the linear's full name.
    :param module: the float ``nn.Linear``.
    :param state: what calibration_init returned, after every calibration_add_batch.
    :param config: that module's effective config.
    :returns: the quantized replacement module.
    """


# =============================================================================
# Saving, dequantizing, training
# =============================================================================
@hookspec(firstresult=True)
def is_serializable(config: QuantizationConfig) -> bool | None:
    """Say whether a model quantized with ``config`` can be saved.

    Called by save_quantized before anything is written. Stops at first non-None
    result; None means True.

    :param config: the model's quantization config.
    :returns: False to refuse saving (raise instead to explain why).
    """


@hookspec(firstresult=True)
def module_state_dict(module_name: str, module: nn.Module, config: QuantizationConfig) -> dict[str, torch.Tensor] | None:
    """Return the tensors of one quantized module, named as the checkpoint format wants.

    Called by save_quantized for every module the method converted. Names are relative
    to the module (``weight``, ``weight.absmax``, ``qweight``...). Stops at first
    non-None result; None means ``module.state_dict()``.

    :param module_name: the module's full name.
    :param module: the quantized module.
    :param config: that module's effective config.
    :returns: name -> tensor, or None.
    """


@hookspec(firstresult=True)
def dequantize(module_name: str, module: nn.Module, config: QuantizationConfig) -> nn.Module | None:
    """Turn one quantized module back into a float ``nn.Linear``.

    Called by ``qcore.dequantize(model)`` for every quantized module. Stops at first
    non-None result.

    :param module_name: the module's full name.
    :param module: the quantized module.
    :param config: that module's effective config.
    :returns: the float replacement module.
    """


@hookspec(firstresult=True)
def is_trainable(config: QuantizationConfig) -> bool | None:
    """Say whether gradients flow through this method's modules (adapters on top).

    Stops at first non-None result; None means False.

    :param config: the quantization config.
    :returns: True when adapters (LoRA) can be trained on top of the quantized model.
    """
