"""qcore.quantize(model, config[, calibration]): the one entry point for quantizing an in-memory model.

Every way of quantizing ends in :func:`mark_quantized`; every way of naming a config goes
through :func:`resolve_user_config`. Which hooks each path calls, in which order, is
listed in docs/hooks.md ("Which hooks run when") and asserted by tests/test_lifecycle.py.

- Methods without calibration (``requires_calibration = False``): the same hooks as a load
  that quantizes on the fly, on the live model (:func:`quantize_weights`).
- Methods with calibration: the layer-by-layer driver in :mod:`qcore.calibration`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qcore.config import QuantizationConfig
from qcore.errors import ConfigError, NonFiniteWeightError, QcoreError
from qcore.modules import get_module, replace_module
from qcore.plugins import config_from_dict, preset_config, registry
from qcore.targeting import select_modules


def resolve_user_config(config: QuantizationConfig | dict[str, Any] | str | None) -> QuantizationConfig:
    """A config from what a user passes: a QuantizationConfig, a ``quantization_config`` dict or a preset name."""
    if isinstance(config, QuantizationConfig):
        return config
    if isinstance(config, str):
        return preset_config(config)
    if isinstance(config, dict):
        return config_from_dict(config, strict=True)
    raise ConfigError(
        f"a quantization config must be a QuantizationConfig (qcore.config(...)), a quantization_config dict or a "
        f"preset name, not {type(config).__name__}"
    )


def mark_quantized(model: nn.Module, config: QuantizationConfig | None, modules: dict[str, QuantizationConfig]) -> nn.Module:
    """Record on ``model`` how it was quantized (None: a float model); read by save_quantized, dequantize, is_trainable."""
    model.qcore_config = config
    model.qcore_modules = dict(modules)
    return model


def check_finite(module_name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse to quantize float tensors holding NaN or Inf (they would give NaN scales or wrong codes)."""
    for rel, tensor in tensors.items():
        if not tensor.dtype.is_floating_point or tensor.device.type == "meta":
            continue
        if tensor.element_size() == 1:  # float8: torch.isfinite has no kernel; every float8 value fits float16
            tensor = tensor.to(torch.float16)
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteWeightError(
                f"tensor {module_name}.{rel} holds {bad} NaN/Inf value(s); it cannot be quantized. Fix the checkpoint, "
                f"or keep this module in float with modules_to_not_convert=[..., {module_name!r}]"
            )


def quantize(
    model: nn.Module,
    config: QuantizationConfig | dict[str, Any] | str,
    calibration: Any = None,
    tokenizer: Any = None,
    *,
    nsamples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Quantize an in-memory float model in place and return it.

    :param model: a float model (e.g. from ``qcore.load_quantized(float_dir)``).
    :param config: the method's config (``qcore.config(...)``), a ``quantization_config`` dict, or a preset name.
    :param calibration: for methods that need data: a text (str), a text file (pathlib.Path), a list of
        texts, or token ids.
    :param tokenizer: turns calibration text into ids (a transformers tokenizer).
    :param nsamples: number of calibration windows.
    :param seqlen: tokens per window.
    :param seed: seed of the window offsets.
    :param device: where modules are quantized (calibration: each block in turn); default where the model is.
    :param progress: show a progress bar.
    :returns: ``model``, quantized (``model.qcore_config`` set).
    """
    config = resolve_user_config(config)
    if not type(config).requires_calibration:
        return quantize_weights(model, config, device)
    from qcore.calibration import calibrate

    return calibrate(model, config, calibration, tokenizer, nsamples=nsamples, seqlen=seqlen, seed=seed,
                     device=device, progress=progress)


def quantize_weights(model: nn.Module, config: QuantizationConfig, device: torch.device | str | None = None) -> nn.Module:
    """Quantize a live float model with a method that needs no data: the hooks of an on-the-fly load.

    The targeted modules' tensors are taken first, then process_before_weight_loading swaps the
    modules (on the live model), then create_quantized_param gets each module's float tensors.
    """
    hooks = registry().hook(config)
    modules = select_modules(model, config)
    hooks.validate_environment(config=config, device_map=device, model=model, modules=modules)
    float_tensors = {name: dict(get_module(model, name).state_dict()) for name in modules}
    for name, tensors in float_tensors.items():
        check_finite(name, tensors)
    dtypes = compute_dtypes(model, modules)
    tied = tied_weights(model) & {f"{name}.weight" for name in modules}
    hooks.process_before_weight_loading(model=model, config=config, modules=modules, pre_quantized=False, metadata={})
    for name, module_config in modules.items():
        tensors = float_tensors.pop(name)
        target = torch.device(device) if device is not None else tensors["weight"].device
        create_module(hooks, model, name, tensors, module_config, target, False, dtypes[name])
    if tied:
        untie_output_head(model)
    hooks.process_after_weight_loading(model=model, config=config)
    return mark_quantized(model, config, modules)


def create_module(hooks: Any, model: nn.Module, name: str, tensors: dict[str, torch.Tensor], config: QuantizationConfig,
                  device: torch.device, pre_quantized: bool, dtype: torch.dtype) -> None:
    """One module through create_quantized_param (float tensors checked for NaN/Inf first), in every path."""
    if not pre_quantized:
        check_finite(name, tensors)
    handled = hooks.create_quantized_param(
        model=model, module_name=name, module=get_module(model, name), tensors=tensors,
        config=config, device=device, pre_quantized=pre_quantized, dtype=dtype,
    )
    if not handled:
        raise QcoreError(f"no plugin built the quantized module {name!r} (create_quantized_param returned None)")


def tied_weights(model: nn.Module) -> set[str]:
    """Names of the parameters shared with another name (a tied output head), as accelerate finds them."""
    from accelerate.utils import find_tied_parameters

    return {name for group in find_tied_parameters(model) for name in group}


def compute_dtypes(model: nn.Module, modules: dict[str, QuantizationConfig]) -> dict[str, torch.dtype]:
    """Module name -> the dtype its float weight has in the skeleton: the compute dtype its plugin must keep."""
    dtypes = {}
    for name in modules:
        weight = getattr(get_module(model, name), "weight", None)
        dtypes[name] = weight.dtype if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point else torch.float32
    return dtypes



def untie_output_head(model: nn.Module) -> None:
    """The output head is quantized separately from the embedding: record that the model is untied."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config) and getattr(text_config(), "tie_word_embeddings", False):
        text_config().tie_word_embeddings = False


def dequantize(model: nn.Module) -> nn.Module:
    """Replace every quantized module by the float module its plugin rebuilds."""
    config = getattr(model, "qcore_config", None)
    if config is None:
        raise QcoreError("this model was not quantized by qcore (no qcore_config); nothing to dequantize")
    hooks = registry().hook(config)
    for name, module_config in model.qcore_modules.items():
        new = hooks.dequantize(module_name=name, module=get_module(model, name), config=module_config)
        if new is None:
            raise QcoreError(f"the {config.quant_method!r} plugin cannot dequantize module {name!r}")
        replace_module(model, name, new)
    model.qcore_config = None
    model.qcore_modules = {}
    return model


def is_trainable(model: nn.Module) -> bool:
    """True when adapters (LoRA) can be trained on top of this quantized model (the is_trainable hook)."""
    config = getattr(model, "qcore_config", None)
    if config is None:
        return True  # a float model trains
    return bool(registry().hook(config).is_trainable(config=config))
