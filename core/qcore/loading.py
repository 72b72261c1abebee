"""load_quantized: the loading pipeline, and in-memory quantization/dequantization.

1. Resolve the config (the checkpoint's ``quantization_config`` or the user's).
2. validate_environment; update_torch_dtype; update_device_map.
3. A skeleton on the meta device (transformers from config.json, or the user's module/factory).
4. Targeting, then process_before_weight_loading swaps the targeted modules.
5. Stream the checkpoint tensor by tensor; the tensors of each quantized module are
   grouped (across shards) and handed once to create_quantized_param; the rest are placed.
6. process_after_weight_loading; missing and unexpected tensors reported precisely.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcore.checkpoint import Checkpoint
from qcore.config import QuantizationConfig
from qcore.errors import ConfigError, MissingKeysError, QcoreError, TensorMismatchError
from qcore.modules import get_module, owning_module_name, replace_module
from qcore.plugins import config_from_dict, preset_config, registry
from qcore.targeting import select_modules

ModelSource = nn.Module | Callable[[], nn.Module] | None


@functools.cache
def _return_large_frees_to_the_os() -> None:
    """Pin glibc's mmap threshold at 1 MiB (once per process, Linux/glibc only).

    glibc raises the threshold after each large free, so the many tensor-sized buffers
    of a streaming load end up on the heap and are never given back: RSS grows to the
    float model's size although only one float tensor is alive at a time. With a fixed
    threshold every tensor-sized buffer is its own mapping and returns to the OS on free.
    """
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc (musl): nothing to tune
            pass


def resolve_config(
    checkpoint_config: dict[str, Any] | None, user_config: QuantizationConfig | dict | str | None
) -> tuple[QuantizationConfig | None, bool]:
    """The config to use and whether the checkpoint is pre-quantized.

    The checkpoint's ``quantization_config`` wins: a user config for the same method
    only fills fields the checkpoint does not set (a warning lists overridden values);
    a user config for another method is an error.
    """
    if isinstance(user_config, str):
        user_config = preset_config(user_config)
    elif isinstance(user_config, dict):
        user_config = config_from_dict(user_config, strict=True)
    if checkpoint_config is None:
        return user_config, False
    stored = config_from_dict(checkpoint_config, strict=False)
    if user_config is None:
        return stored, True
    if user_config.quant_method != stored.quant_method:
        raise ConfigError(
            f"the checkpoint is already quantized with {stored.quant_method!r}; it cannot be loaded as "
            f"{user_config.quant_method!r}. Load it without quantization_config, or start from a float checkpoint"
        )
    user_dict, stored_dict = user_config.to_dict(), stored.to_dict()
    overridden = sorted(k for k in checkpoint_config if k in user_dict and user_dict[k] != stored_dict.get(k))
    if overridden:
        warnings.warn(f"the checkpoint's quantization_config wins for {', '.join(overridden)}", stacklevel=3)
    merged = {**user_dict, **checkpoint_config}
    return type(stored).from_dict(merged, strict=False), True


def build_skeleton(ckpt: Checkpoint, model: ModelSource, dtype: torch.dtype) -> nn.Module:
    """The model with its parameters on the meta device."""
    from accelerate import init_empty_weights

    if isinstance(model, nn.Module):
        return model
    if callable(model):
        with init_empty_weights():
            return model()
    if ckpt.config is None:
        raise QcoreError(f"{ckpt.directory} has no config.json; pass model= (an nn.Module or a factory)")
    try:
        import transformers
    except ImportError as exc:
        raise QcoreError(
            "building a model from config.json needs transformers: pip install 'qcore[hf]', or pass model="
        ) from exc
    hf_config = transformers.AutoConfig.from_pretrained(ckpt.directory)
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # qcore quantizes; transformers must build a plain float skeleton
    architectures = getattr(hf_config, "architectures", None) or []
    auto = transformers.AutoModelForCausalLM if any(a.endswith("ForCausalLM") for a in architectures) else transformers.AutoModel
    with init_empty_weights():
        return auto.from_config(hf_config, dtype=dtype)


def load_quantized(
    checkpoint: str | Path,
    quantization_config: QuantizationConfig | dict | str | None = None,
    *,
    model: ModelSource = None,
    device_map: Any = None,
    torch_dtype: torch.dtype | str | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
    strict: bool = True,
    progress: bool = True,
) -> nn.Module:
    """Load a checkpoint, quantized (method from its config.json) or float (quantized on the fly).

    :param checkpoint: a directory (config.json + safetensors shards) or one .safetensors file.
    :param quantization_config: for a float checkpoint, the config to quantize with on the fly
        (a QuantizationConfig, a ``quantization_config`` dict, or a preset name). None loads what
        the checkpoint holds.
    :param model: the skeleton, when not built from config.json: an nn.Module (ideally on the
        meta device) or a factory called under ``init_empty_weights``.
    :param device_map: None or a device ("cpu", "cuda:0"), "auto", or {module name: device};
        "auto" and dicts are resolved and dispatched with accelerate (CPU/disk offload).
    :param torch_dtype: dtype of the float parts (default: the method's choice, else float32).
    :param max_memory: per-device budget for ``device_map="auto"``.
    :param offload_folder: where accelerate puts modules mapped to "disk".
    :param strict: raise MissingKeysError when the checkpoint lacks tensors the model needs.
    :param progress: show a progress bar while streaming tensors.
    :returns: the model in eval mode, with ``qcore_config`` and ``qcore_modules`` attributes.
    """
    from qcore.config import parse_dtype

    _return_large_frees_to_the_os()
    ckpt = Checkpoint(checkpoint)
    config, pre_quantized = resolve_config(ckpt.quantization_config, quantization_config)
    torch_dtype = parse_dtype(torch_dtype, "torch_dtype")
    if config is not None:
        hooks = registry().hook(config)
        hooks.validate_environment(config=config, device_map=device_map)
        torch_dtype = hooks.update_torch_dtype(config=config, torch_dtype=torch_dtype) or torch_dtype
        device_map = hooks.update_device_map(config=config, device_map=device_map) or device_map
    torch_dtype = torch_dtype or torch.float32
    skeleton = build_skeleton(ckpt, model, torch_dtype)
    modules = select_modules(skeleton, config) if config is not None else {}
    if config is not None:
        hooks.process_before_weight_loading(model=skeleton, config=config, modules=modules, pre_quantized=pre_quantized)
    placement = _Placement(skeleton, device_map, config, max_memory, torch_dtype)
    loader = _WeightLoader(skeleton, ckpt, config, modules, pre_quantized, torch_dtype, placement)
    loader.run(progress)
    loader.report(strict)
    if config is not None:
        hooks.process_after_weight_loading(model=skeleton, config=config)
    skeleton.qcore_config = config
    skeleton.qcore_modules = modules
    placement.dispatch(skeleton, offload_folder)
    return skeleton.eval()


class _Placement:
    """Which device each tensor goes to, from a device map."""

    def __init__(self, model: nn.Module, device_map: Any, config: QuantizationConfig | None, max_memory: Any, dtype: torch.dtype) -> None:
        self.map: dict[str, Any] | None = None
        self.default = torch.device("cpu")
        if device_map is None or isinstance(device_map, str | torch.device | int) and device_map != "auto":
            self.default = torch.device(device_map if device_map is not None else "cpu")
            return
        if device_map == "auto":
            from accelerate.utils import get_max_memory, infer_auto_device_map

            budget = get_max_memory(max_memory)
            if config is not None:
                budget = registry().hook(config).adjust_max_memory(config=config, max_memory=budget) or budget
            device_map = infer_auto_device_map(
                model, max_memory=budget, no_split_module_classes=getattr(model, "_no_split_modules", None), dtype=dtype
            )
        self.map = dict(device_map)

    def device_for(self, module_name: str) -> torch.device:
        if self.map is None:
            return self.default
        best, best_len = None, -1
        for prefix, device in self.map.items():
            if (prefix == "" or module_name == prefix or module_name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = device, len(prefix)
        if best is None:
            raise ConfigError(f"device_map does not place module {module_name!r}; map it (or its parent) to a device")
        # "disk" and "cpu" modules are loaded to CPU; accelerate offloads them in dispatch().
        return torch.device("cpu") if best in ("cpu", "disk") else torch.device(best if not isinstance(best, int) else f"cuda:{best}")

    def dispatch(self, model: nn.Module, offload_folder: str | Path | None) -> None:
        if self.map is None or len(set(self.map.values())) <= 1 and "disk" not in self.map.values():
            return
        from accelerate import dispatch_model

        if "disk" in self.map.values() and offload_folder is None:
            raise ConfigError("device_map offloads modules to 'disk'; pass offload_folder= (a directory for them)")
        main = next((d for d in self.map.values() if d not in ("cpu", "disk")), "cpu")
        dispatch_model(model, device_map=self.map, main_device=main, offload_dir=offload_folder)


class _WeightLoader:
    """Step 5: stream the checkpoint into the skeleton."""

    def __init__(self, model: nn.Module, ckpt: Checkpoint, config: QuantizationConfig | None,
                 modules: dict[str, QuantizationConfig], pre_quantized: bool, dtype: torch.dtype, placement: _Placement) -> None:
        self.model, self.ckpt, self.config, self.modules = model, ckpt, config, modules
        self.pre_quantized, self.dtype, self.placement = pre_quantized, dtype, placement
        self.module_names = {name for name, _ in model.named_modules()}
        self.targets: dict[str, dict[str, str]] = {}  # module -> {tensor name: relative name} still expected
        self.unexpected: list[str] = []
        self.loaded: set[str] = set()
        self._plan()

    def _plan(self) -> None:
        hooks = registry().hook(self.config) if self.config is not None else None
        for name in self.ckpt.tensors:
            owner = owning_module_name(name, self.module_names)
            if owner in self.modules and hooks is not None:
                module = get_module(self.model, owner)
                needs = hooks.param_needs_quantization(
                    model=self.model, param_name=name, module_name=owner, module=module, config=self.modules[owner]
                )
                if needs:
                    self.targets.setdefault(owner, {})[name] = name[len(owner) + 1 :]

    def run(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        pending: dict[str, dict[str, torch.Tensor]] = {}
        owner_of = {t: m for m, names in self.targets.items() for t in names}
        bar = tqdm(total=len(self.ckpt.tensors), desc="Loading tensors", unit="tensor", disable=not progress, leave=False)
        for name, tensor in self.ckpt.iter_tensors():
            bar.update(1)
            owner = owner_of.get(name)
            if owner is None:
                self._place(name, tensor)
                continue
            group = pending.setdefault(owner, {})
            group[self.targets[owner][name]] = tensor
            if len(group) == len(self.targets[owner]):
                self._create(owner, pending.pop(owner))
        bar.close()

    def _create(self, module_name: str, tensors: dict[str, torch.Tensor]) -> None:
        hooks = registry().hook(self.config)
        module = get_module(self.model, module_name)
        handled = hooks.create_quantized_param(
            model=self.model, module_name=module_name, module=module, tensors=tensors,
            config=self.modules[module_name], device=self.placement.device_for(module_name), pre_quantized=self.pre_quantized,
        )
        if not handled:
            raise QcoreError(f"no plugin built the quantized module {module_name!r} (create_quantized_param returned None)")
        self.loaded.update(f"{module_name}.{k}" for k in tensors)

    def _place(self, name: str, tensor: torch.Tensor) -> None:
        from accelerate.utils import set_module_tensor_to_device

        module_name, _, attr = name.rpartition(".")
        try:
            module = get_module(self.model, module_name)
        except AttributeError:
            self.unexpected.append(name)
            return
        current = module._parameters.get(attr) if attr in module._parameters else module._buffers.get(attr, None)
        if current is None and attr not in module._parameters and attr not in module._buffers:
            self.unexpected.append(name)
            return
        if current is not None and tuple(current.shape) != tuple(tensor.shape):
            raise TensorMismatchError(
                f"tensor {name!r} has shape {list(tensor.shape)} in the checkpoint but the model expects "
                f"{list(current.shape)}: the checkpoint does not belong to this model (check config.json)"
            )
        if current is not None and current.dtype.is_floating_point != tensor.dtype.is_floating_point:
            raise TensorMismatchError(
                f"tensor {name!r} is {tensor.dtype} in the checkpoint but the model expects {current.dtype}"
            )
        if tensor.dtype.is_floating_point and tensor.dtype != self.dtype:
            tensor = tensor.to(self.dtype)
        set_module_tensor_to_device(self.model, name, self.placement.device_for(module_name), value=tensor)
        self.loaded.add(name)

    def report(self, strict: bool) -> None:
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        missing = [
            name for name, t in list(self.model.named_parameters()) + list(self.model.named_buffers())
            if t.device.type == "meta"
        ]
        incomplete = sorted(set(self.targets) - {n.rpartition(".")[0] for n in self.loaded if n.rpartition(".")[0] in self.targets})
        if incomplete:
            raise MissingKeysError(f"quantized module(s) {', '.join(incomplete[:5])} were never completed")
        if self.unexpected:
            shown = ", ".join(self.unexpected[:10]) + (" ..." if len(self.unexpected) > 10 else "")
            warnings.warn(f"{len(self.unexpected)} checkpoint tensor(s) have no place in the model and were ignored: {shown}", stacklevel=4)
        if missing and strict:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise MissingKeysError(
                f"the checkpoint lacks {len(missing)} tensor(s) the model needs: {shown}. "
                "Is it the right checkpoint for this model? (strict=False leaves them uninitialised on 'meta')"
            )


# --- in-memory conversion -------------------------------------------------------------
def quantize_weights(model: nn.Module, config: QuantizationConfig, device: torch.device | str | None = None) -> nn.Module:
    """Quantize an in-memory float model with a method that needs no calibration data.

    Runs the loading hooks on the live model: process_before_weight_loading swaps the
    targeted modules, then create_quantized_param gets each module's float tensors.
    """
    hooks = registry().hook(config)
    hooks.validate_environment(config=config, device_map=device)
    modules = select_modules(model, config)
    float_tensors = {name: dict(get_module(model, name).state_dict()) for name in modules}
    hooks.process_before_weight_loading(model=model, config=config, modules=modules, pre_quantized=False)
    for name, module_config in modules.items():
        tensors = float_tensors.pop(name)
        target = torch.device(device) if device is not None else tensors["weight"].device
        handled = hooks.create_quantized_param(
            model=model, module_name=name, module=get_module(model, name), tensors=tensors,
            config=module_config, device=target, pre_quantized=False,
        )
        if not handled:
            raise QcoreError(f"no plugin quantized module {name!r} (create_quantized_param returned None)")
    hooks.process_after_weight_loading(model=model, config=config)
    model.qcore_config = config
    model.qcore_modules = modules
    return model


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
