"""load_quantized: the loading pipeline.

1. Resolve the config (the checkpoint's ``quantization_config`` or the user's).
2. validate_environment.
3. A skeleton on the meta device (transformers from config.json, or the user's module/factory),
   its floating tensors in ``torch_dtype``.
4. Targeting, then process_before_weight_loading swaps the targeted modules.
5. Stream the checkpoint tensor by tensor; the tensors of each quantized module are
   grouped (across shards) and handed once to create_quantized_param (with the module's
   compute dtype); the rest are placed. A targeted module whose weight is tied to another
   tensor (a tied ``lm_head``) is built from that tensor.
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
from qcore.errors import CheckpointError, ConfigError, MissingKeysError, QcoreError, TensorMismatchError
from qcore.modules import get_module, owning_module_name
from qcore.plugins import config_from_dict, registry
from qcore.quantization import compute_dtypes, create_module, mark_quantized, resolve_user_config, untie_output_head
from qcore.targeting import select_modules

ModelSource = nn.Module | Callable[[], nn.Module] | None
_TRIM_AFTER_BYTES = 1 << 20  # hand freed heap pages back after every tensor this large


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        return None


def _give_freed_memory_back() -> None:
    """Ask glibc to return the free pages of its heaps to the OS (Linux/glibc only).

    A streaming load frees one tensor-sized buffer after another while the quantized
    results stay alive between them; glibc keeps the freed holes for reuse, and when the
    next temporaries do not fit them the heap grows, so RSS would climb towards the float
    model's size. ``malloc_trim(0)`` hands the free pages of every hole back (madvise),
    after each large tensor. It changes no allocator setting of the host process.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def resolve_config(
    checkpoint_config: dict[str, Any] | None, user_config: QuantizationConfig | dict | str | None
) -> tuple[QuantizationConfig | None, bool]:
    """The config to use and whether the checkpoint is pre-quantized.

    The checkpoint's ``quantization_config`` wins: a user config for the same method
    only fills fields the checkpoint does not set (a warning lists overridden values);
    a user config for another method is an error.
    """
    if user_config is not None:
        user_config = resolve_user_config(user_config)
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


def build_skeleton(ckpt: Checkpoint, model: ModelSource, dtype: torch.dtype | None, trust_remote_code: bool = False) -> nn.Module:
    """The model with its parameters on the meta device, its floating tensors in ``dtype`` when given.

    From config.json, transformers is asked never to run code shipped with the checkpoint
    (``auto_map``) unless ``trust_remote_code=True``.
    """
    from accelerate import init_empty_weights

    if isinstance(model, nn.Module):
        return _cast_parameters(model, dtype)
    if callable(model):
        with init_empty_weights():
            built = model()
        return _cast_parameters(built, dtype)
    if ckpt.config is None:
        raise QcoreError(f"{ckpt.directory} has no config.json; pass model= (an nn.Module or a factory)")
    try:
        import transformers
    except ImportError as exc:
        raise QcoreError(
            "building a model from config.json needs transformers: pip install 'qcore[hf]', or pass model="
        ) from exc
    if ckpt.config.get("auto_map") and not trust_remote_code:
        raise QcoreError(
            f"{ckpt.directory / 'config.json'} asks for custom code shipped with the checkpoint (auto_map); qcore "
            "never runs a checkpoint's code unless you trust it: pass trust_remote_code=True (CLI: "
            "--trust-remote-code) after reading that code, or pass model= (your own nn.Module)"
        )
    try:
        hf_config = transformers.AutoConfig.from_pretrained(ckpt.directory, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise CheckpointError(f"{ckpt.directory / 'config.json'} cannot be read as a transformers config: {exc}") from exc
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # qcore quantizes; transformers must build a plain float skeleton
    architectures = getattr(hf_config, "architectures", None) or []
    auto = transformers.AutoModelForCausalLM if any(a.endswith("ForCausalLM") for a in architectures) else transformers.AutoModel
    try:
        with init_empty_weights():
            return auto.from_config(hf_config, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt.directory / 'config.json'}: transformers cannot build this model: {exc}") from exc


def _cast_parameters(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """Floating parameters to ``dtype`` (as transformers' ``dtype=`` does); buffers such as rotary tables keep theirs."""
    if dtype is None:
        return model
    cast: dict[int, nn.Parameter] = {}  # tied parameters stay one parameter
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.dtype.is_floating_point and param.dtype != dtype:
                if id(param) not in cast:
                    cast[id(param)] = nn.Parameter(param.to(dtype), requires_grad=param.requires_grad)
                module._parameters[name] = cast[id(param)]
    return model


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
    trust_remote_code: bool = False,
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
    :param torch_dtype: dtype of the float parts (default float32 for a model built from
        config.json; a ``model=`` skeleton keeps its own dtypes unless this is given).
    :param max_memory: per-device budget for ``device_map="auto"``.
    :param offload_folder: where accelerate puts modules mapped to "disk".
    :param strict: raise MissingKeysError when the checkpoint lacks tensors the model needs.
    :param progress: show a progress bar while streaming tensors.
    :param trust_remote_code: allow transformers to run the Python code a checkpoint ships
        (``auto_map`` in config.json). Off by default: such a checkpoint is refused.
    :returns: the model in eval mode, with ``qcore_config`` and ``qcore_modules`` attributes.
    """
    from qcore.config import parse_dtype

    ckpt = Checkpoint(checkpoint)
    config, pre_quantized = resolve_config(ckpt.quantization_config, quantization_config)
    torch_dtype = parse_dtype(torch_dtype, "torch_dtype")
    skeleton = build_skeleton(ckpt, model, torch_dtype, trust_remote_code)
    modules = select_modules(skeleton, config) if config is not None else {}
    tied_sources = _tied_sources(skeleton, ckpt, modules)
    dtypes = compute_dtypes(skeleton, modules)
    if config is not None:
        hooks = registry().hook(config)
        hooks.validate_environment(config=config, device_map=device_map, model=skeleton, modules=modules)
        hooks.process_before_weight_loading(model=skeleton, config=config, modules=modules, pre_quantized=pre_quantized,
                                            metadata=dict(ckpt.metadata))
    placement = _Placement(skeleton, device_map, max_memory, torch_dtype or torch.float32)
    loader = _WeightLoader(skeleton, ckpt, config, modules, pre_quantized, torch_dtype, placement, tied_sources, dtypes)
    loader.run(progress)
    loader.report(strict)
    if config is not None:
        hooks.process_after_weight_loading(model=skeleton, config=config)
    mark_quantized(skeleton, config, modules)
    skeleton.qcore_source = str(ckpt.directory)
    placement.dispatch(skeleton, offload_folder)
    return skeleton.eval()


def _tied_sources(model: nn.Module, ckpt: Checkpoint, modules: dict[str, QuantizationConfig]) -> dict[str, str]:
    """checkpoint tensor -> module to quantize from it, for targeted modules whose weight is tied to it.

    A tied ``lm_head`` is not in the checkpoint (only the embedding is); to quantize it while
    loading, the embedding's tensor is handed to the head's create_quantized_param too, and
    the model is untied (its config says so, so the saved checkpoint is read back untied).
    """
    from accelerate.utils import find_tied_parameters

    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights()  # transformers ties in from_pretrained, not in from_config
    sources: dict[str, str] = {}
    for group in find_tied_parameters(model):
        present = [name for name in group if name in ckpt.tensors]
        for name in group:
            module_name, _, attr = name.rpartition(".")
            if attr == "weight" and module_name in modules and name not in ckpt.tensors and present:
                sources[present[0]] = module_name
    return sources


class _Placement:
    """Which device each tensor goes to, from a device map."""

    def __init__(self, model: nn.Module, device_map: Any, max_memory: Any, dtype: torch.dtype) -> None:
        self.map: dict[str, Any] | None = None
        self.default = torch.device("cpu")
        if device_map is None or isinstance(device_map, str | torch.device | int) and device_map != "auto":
            self.default = torch.device(device_map if device_map is not None else "cpu")
            return
        if device_map == "auto":
            from accelerate.utils import get_max_memory, infer_auto_device_map

            budget = get_max_memory(max_memory)
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
                 modules: dict[str, QuantizationConfig], pre_quantized: bool, dtype: torch.dtype | None,
                 placement: _Placement, tied_sources: dict[str, str], dtypes: dict[str, torch.dtype]) -> None:
        self.model, self.ckpt, self.config, self.modules = model, ckpt, config, modules
        self.pre_quantized, self.dtype, self.placement = pre_quantized, dtype, placement
        self.tied_sources, self.dtypes = tied_sources, dtypes
        self.module_names = {name for name, _ in model.named_modules()}
        self.targets: dict[str, dict[str, str]] = {}  # module -> {tensor name: relative name} still expected
        self.unexpected: list[str] = []
        self.loaded: set[str] = set()
        self._plan()

    def _plan(self) -> None:
        """Every checkpoint tensor of a converted module goes, with its siblings, to create_quantized_param."""
        for name in self.ckpt.tensors:
            owner = owning_module_name(name, self.module_names)
            if owner in self.modules:
                self.targets.setdefault(owner, {})[name] = name[len(owner) + 1 :]

    def run(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        pending: dict[str, dict[str, torch.Tensor]] = {}
        owner_of = {t: m for m, names in self.targets.items() for t in names}
        bar = tqdm(total=len(self.ckpt.tensors), desc="Loading tensors", unit="tensor", disable=not progress, leave=False)
        for name, tensor in self.ckpt.iter_tensors():
            bar.update(1)
            large = tensor.nbytes >= _TRIM_AFTER_BYTES
            if name in self.tied_sources:
                self._create(self.tied_sources[name], {"weight": tensor.clone()}, tied_to=name)
            owner = owner_of.get(name)
            if owner is None:
                self._place(name, tensor)
            else:
                pending.setdefault(owner, {})[self.targets[owner][name]] = tensor
                if len(pending[owner]) == len(self.targets[owner]):
                    self._create(owner, pending.pop(owner))
            del tensor  # the last reference to a consumed tensor: freed before the next one is read
            if large:
                _give_freed_memory_back()
        bar.close()

    def _create(self, module_name: str, tensors: dict[str, torch.Tensor], tied_to: str | None = None) -> None:
        create_module(registry().hook(self.config), self.model, module_name, tensors, self.modules[module_name],
                      self.placement.device_for(module_name), self.pre_quantized, self.dtypes[module_name])
        if tied_to is not None:
            untie_output_head(self.model)
            self.loaded.add(tied_to)
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
        if tensor.dtype.is_floating_point:
            want = current.dtype if current is not None else (self.dtype or torch.float32)
            if tensor.dtype != want:
                tensor = tensor.to(want)
        set_module_tensor_to_device(self.model, name, self.placement.device_for(module_name), value=tensor)
        self.loaded.add(name)

    def report(self, strict: bool) -> None:
        if hasattr(self.model, "tie_weights") and not self.tied_sources:
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
