"""torchao itself: the version check, and torchao configs read from names and from their serialized form.

A torchao config (``AOBaseConfig``) is serialized by torchao's own ``config_to_dict`` as
``{"_type": "Int8WeightOnlyConfig", "_version": 2, "_data": {...}}``; transformers stores it in
config.json as ``quant_type: {"default": <that dict>}``. This module only wraps torchao's
``config_to_dict`` / ``config_from_dict`` with the checks qcore wants (a clear error for an unknown
class, an unreadable ``_version``, a config with no kernel on this device).
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from typing import Any

from qcore.errors import ConfigError

MIN_TORCHAO = (0, 18, 0)
INSTALL_HINT = "pip install torchao==0.18.0 (the release that goes with torch 2.13)"

# torchao configs qcore runs on a CPU (quantize, save, load, run), each tested against transformers + torchao.
CPU_CONFIGS = (
    "Int8WeightOnlyConfig",
    "Float8WeightOnlyConfig",
    "Int8DynamicActivationInt8WeightConfig",
    "IntxWeightOnlyConfig",
    "Int4WeightOnlyConfig",  # plain packing only: made and run by qcore_torchao.int4_plain on a CPU
)
# configs torchao can only run on a CUDA GPU (no CPU kernel in torchao 0.18 for any of their packings)
CUDA_ONLY_CONFIGS = {
    "Float8DynamicActivationFloat8WeightConfig": "float8 activations need a CUDA GPU with compute capability >= 8.9",
    "Float8DynamicActivationInt4WeightConfig": "its int4 kernel is CUDA-only",
    "Int8DynamicActivationInt4WeightConfig": "its int4 kernel is CUDA-only",
    "NVFP4DynamicActivationNVFP4WeightConfig": "NVFP4 needs a CUDA GPU with compute capability >= 10.0",
    "MXDynamicActivationMXWeightConfig": "MX formats need a CUDA GPU with compute capability >= 10.0",
}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.cache
def require_torchao() -> Any:
    """Import torchao, or raise ConfigError saying what to install (missing, or older than 0.18.0); checked once."""
    try:
        version = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"the 'torchao' method needs the torchao library, which is not installed: {INSTALL_HINT}") from None
    if _version_tuple(version) < MIN_TORCHAO:
        raise ConfigError(
            f"torchao {version} is installed but qcore-plugin-torchao needs torchao >= "
            f"{'.'.join(map(str, MIN_TORCHAO))} (its tensor layouts and safetensors metadata): {INSTALL_HINT}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao warns about optional CUDA extensions it cannot load on CPU
        import torchao
        import torchao.quantization  # noqa: F401
    return torchao


def devices_available() -> str:
    """The device kind whose configs apply here: 'cuda' when a CUDA GPU is usable, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def configs_for_this_device() -> list[str]:
    """Names of the torchao configs qcore can run on this machine."""
    names = list(CPU_CONFIGS)
    if devices_available() == "cuda":
        names += sorted(CUDA_ONLY_CONFIGS)
    return names


def _unknown_config(name: Any) -> ConfigError:
    return ConfigError(
        f"quant_type {name!r} is not a torchao config qcore can use; configs that work on this device "
        f"({devices_available()}): {', '.join(configs_for_this_device())}. Give one by name "
        "(--option quant_type=Int8WeightOnlyConfig) or as torchao's config_to_dict form"
    )


def config_class(name: str) -> type:
    """The AOBaseConfig subclass called ``name`` in torchao's allow-listed modules."""
    require_torchao()
    import importlib

    from torchao.core.config import ALLOWED_AO_MODULES, AOBaseConfig

    for module_path in ALLOWED_AO_MODULES:
        try:
            cls = getattr(importlib.import_module(module_path), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, AOBaseConfig):
            return cls
    raise _unknown_config(name)


def serialized(quant_type: Any) -> dict[str, Any]:
    """The ``{"_type", "_version", "_data"}`` dict of a config given by class name, as an instance, or serialized.

    A serialized config is read back with torchao (so it is checked) and written again, so the result
    is always what torchao's ``config_to_dict`` writes.
    """
    require_torchao()
    from torchao.core.config import AOBaseConfig, config_to_dict

    if isinstance(quant_type, AOBaseConfig):
        return config_to_dict(quant_type)
    if isinstance(quant_type, str):
        return config_to_dict(config_class(quant_type)())
    if isinstance(quant_type, dict):
        return config_to_dict(instantiate(quant_type))
    raise ConfigError(
        f"quant_type must be a torchao config name (e.g. 'Int8WeightOnlyConfig'), a torchao config, or its "
        f"config_to_dict form, got {type(quant_type).__name__}"
    )


def instantiate(data: dict[str, Any]) -> Any:
    """The torchao config of a serialized ``{"_type", "_version", "_data"}`` dict; ConfigError when unreadable."""
    require_torchao()
    from torchao.core.config import config_from_dict

    if not isinstance(data, dict) or not isinstance(data.get("_type"), str) or not isinstance(data.get("_data"), dict):
        raise ConfigError(
            f"quant_type must be torchao's serialized config {{'_type': ..., '_version': ..., '_data': {{...}}}}, got {data!r}"
        )
    cls = config_class(data["_type"])
    current = getattr(cls, "version", 1)
    stored = data.get("_version", 1)
    if stored != current:
        import torchao

        raise ConfigError(
            f"quant_type {data['_type']} has _version {stored!r}, but torchao {torchao.__version__} reads version "
            f"{current} of this config only; re-quantize the float model with this torchao, or install the torchao "
            "release that wrote the checkpoint"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return config_from_dict(data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ConfigError(f"torchao cannot read quant_type {data['_type']}: {exc}") from exc


def check_device(name: str, device_kind: str) -> None:
    """ConfigError when the config ``name`` has no kernel on ``device_kind`` ('cpu' or 'cuda')."""
    if device_kind != "cuda" and name in CUDA_ONLY_CONFIGS:
        raise ConfigError(
            f"{name} needs a CUDA GPU ({CUDA_ONLY_CONFIGS[name]}); this machine would run it on {device_kind}. "
            f"Configs that work on {device_kind}: {', '.join(CPU_CONFIGS)}"
        )
    if name not in CPU_CONFIGS and name not in CUDA_ONLY_CONFIGS:
        raise _unknown_config(name)
