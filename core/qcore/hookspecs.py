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
def validate_environment(
    config: QuantizationConfig, device_map: Any, model: nn.Module, modules: dict[str, QuantizationConfig]
) -> None:
    """Raise a clear error if this machine, this model or these modules cannot run ``config``.

    Called once per load and per quantize, after targeting chose the modules and before
    any quantized tensor is allocated (when loading, ``model`` is the meta-device skeleton;
    when quantizing in memory, the live float model, before any block is calibrated). Check
    optional dependencies, devices, option combinations and every module's shape
    (e.g. sizes a packing format cannot hold) here, so nothing fails half-way.

    :param config: the resolved quantization config.
    :param device_map: the device map as the user gave it (None, "cpu", "auto", a dict).
    :param model: the model whose modules will convert.
    :param modules: module name -> effective config, for every module that will convert.
    :returns: nothing; raise ``qcore.errors.ConfigError`` (or a subclass of
        ``QcoreError``) naming the module to stop.
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
    metadata: dict[str, str],
) -> None:
    """Swap the targeted modules for the method's modules (built on the ``meta`` device).

    Called once per load, after validate_environment, on the skeleton whose parameters
    live on the ``meta`` device; and once per ``qcore.quantize`` without calibration, on
    the live float model, whose targeted modules' tensors the core has already taken
    (they reach create_quantized_param): replace those modules, do not read them. Use
    ``qcore.modules.replace_module(model, name, new_module)`` to swap.

    :param model: the skeleton (meta device) or the live model (in-memory quantization).
    :param config: the resolved quantization config (the model-wide one).
    :param modules: module name -> effective config of that module (per-module
        overrides applied), for every module that must be converted.
    :param pre_quantized: True when the checkpoint already holds quantized tensors,
        False when float weights will be quantized on the fly.
    :param metadata: the checkpoint's safetensors ``__metadata__`` (string -> string, all
        shards merged; what checkpoint_metadata wrote), ``{}`` when quantizing in memory.
    :returns: nothing.
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
    dtype: torch.dtype,
) -> bool | None:
    """Build one quantized module's parameters from its checkpoint tensors.

    Called once per quantized module, when all its tensors have been read (they may
    come from several shards): every checkpoint tensor whose name starts with the
    module's name is handed here. Quantize here when ``pre_quantized`` is False (the
    core has already refused NaN/Inf float weights). Check every tensor's presence,
    shape and dtype against the format and raise ``qcore.errors.CheckpointError`` (or
    ``TensorMismatchError``) naming the module when one does not fit. Stops at first
    non-None result.

    :param model: the model being loaded or quantized.
    :param module_name: the module's full name.
    :param module: the module to fill (the method's module).
    :param tensors: tensor name relative to the module (``weight``, ``weight.absmax``,
        ``qweight``, ``bias``...) -> tensor, as stored (checkpoint dtype). When loading they
        are fresh CPU tensors; when quantizing a live model, the module's own tensors on
        its device. A tied output head gets the embedding's tensor as ``weight``.
    :param config: the module's effective config.
    :param device: where the module's tensors must end up.
    :param pre_quantized: True for a quantized checkpoint, False for float weights.
    :param dtype: the compute dtype of this module (the dtype its float weight has in the
        model, from ``torch_dtype``): float parts such as ``bias`` and the module's outputs
        must be in this dtype.
    :returns: True once handled.
    """


@hookspec
def process_after_weight_loading(model: nn.Module, config: QuantizationConfig) -> None:
    """Finishing touches once every tensor is placed: repack for a kernel, tie, flags.

    Called once per load or quantize, after all tensors are loaded. A plugin built on the shared
    kernels also hands the layers it left in float (the output head) to
    :func:`qcore.int4.decode_float_linears` here, for their float32 GEMV.

    :param model: the loaded model.
    :param config: the resolved quantization config.
    :returns: nothing.
    """


# =============================================================================
# Calibration (methods whose config has ``requires_calibration = True``)
# =============================================================================
@hookspec(firstresult=True)
def calibration_init(
    module_name: str, module: nn.Module, config: QuantizationConfig, model: nn.Module,
    modules: dict[str, QuantizationConfig],
) -> Any:
    """Start collecting statistics for one float linear of the current block.

    Called by the calibration driver (qcore.calibration) before the calibration
    batches run through the block. Methods that work on whole blocks (AWQ) find the
    block and its other targeted linears through ``model`` and ``modules``. Stops at
    first non-None result.

    :param module_name: the linear's full name.
    :param module: the float ``nn.Linear``.
    :param config: that module's effective config.
    :param model: the model being calibrated (blocks already quantized hold their new modules).
    :param modules: module name -> effective config, for every module the calibration converts.
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
def checkpoint_metadata(model: nn.Module, config: QuantizationConfig, tensors: dict[str, torch.Tensor]) -> dict[str, str] | None:
    """Return extra safetensors ``__metadata__`` for the checkpoint being saved.

    Called once by save_quantized, after every module_state_dict, with the whole state
    that will be written; the result is written into every shard's header (as transformers
    does), next to ``{"format": "pt"}``, and handed back to process_before_weight_loading
    when the checkpoint is loaded. Stops at first non-None result; None adds nothing.

    :param model: the model being saved.
    :param config: the model's quantization config.
    :param tensors: every tensor of the checkpoint, name -> tensor, as it will be written.
    :returns: string -> string entries, or None.
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
