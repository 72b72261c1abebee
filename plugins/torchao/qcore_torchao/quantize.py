"""One layer's torchao weight: quantized from float with ``quantize_``, or rebuilt from checkpoint tensors."""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from qcore.errors import CheckpointError, ConfigError, TensorMismatchError

from . import int4_plain
from .config import TorchAoConfig
from .format import WEIGHT_PREFIX, parse_weight_metadata, rebuild_weight, weight_metadata


def _quantize_linear_weight(weight: torch.Tensor, ao_config: Any) -> torch.Tensor:
    """torchao's ``quantize_`` on a one-layer nn.Linear holding ``weight`` (out, in); returns the new weight.

    ``Int4WeightOnlyConfig`` on a CPU (a meta template: on a machine without CUDA) is made by :mod:`qcore_torchao.int4_plain` (torchao's
    ``Int4Tensor`` built from a torch re-implementation of mslk's CUDA-only quantizer).
    """
    from torchao.quantization import quantize_

    on_cpu = weight.device.type == "cpu" or (weight.device.type == "meta" and not torch.cuda.is_available())
    if type(ao_config).__name__ == int4_plain.INT4_CONFIG and on_cpu:
        reason = int4_plain.unsupported_reason(ao_config, weight.shape[1])
        if reason:
            raise ValueError(reason)
        return int4_plain.int4_tensor(weight, ao_config.group_size)

    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao's deprecation notes about inductor settings
        quantize_(linear, ao_config)
    return linear.weight.detach()


def quantize_weight(module_name: str, module: nn.Module, weight: torch.Tensor, config: TorchAoConfig,
                    dtype: torch.dtype) -> torch.Tensor:
    """Quantize one float weight (out, in) with the layer's torchao config, in the layer's compute ``dtype``."""
    if tuple(weight.shape) != (module.out_features, module.in_features) or not weight.dtype.is_floating_point:
        raise TensorMismatchError(
            f"{module_name}: float weight is {weight.dtype} {list(weight.shape)}, expected "
            f"[{module.out_features}, {module.in_features}] floating point"
        )
    try:
        return _quantize_linear_weight(weight.to(dtype), config.ao_config())
    except (RuntimeError, ValueError, AssertionError, NotImplementedError) as exc:
        raise ConfigError(
            f"{module_name} ({module.out_features}x{module.in_features}, {dtype}) cannot be quantized "
            f"with {config.type_name}: {exc}"
        ) from exc


@lru_cache(maxsize=64)
def _template(quant_type_json: str, out_features: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    from . import aoconfig

    empty = torch.empty(out_features, in_features, dtype=dtype, device="meta")  # torchao quantizes meta tensors: free
    return _quantize_linear_weight(empty, aoconfig.instantiate(json.loads(quant_type_json)))


def template_weight(module_name: str, module: nn.Module, config: TorchAoConfig, dtype: torch.dtype) -> torch.Tensor:
    """What torchao makes of this layer with this config, on the meta device: the layout a checkpoint must have."""
    try:
        return _template(json.dumps(config.quant_type["default"], sort_keys=True), module.out_features,
                         module.in_features, dtype)
    except (RuntimeError, ValueError, AssertionError, NotImplementedError) as exc:
        raise ConfigError(
            f"{module_name} ({module.out_features}x{module.in_features}) cannot hold a {config.type_name} weight: {exc}"
        ) from exc


def load_weight(module_name: str, module: nn.Module, tensors: dict[str, torch.Tensor], config: TorchAoConfig,
                metadata: dict[str, str] | None, dtype: torch.dtype) -> torch.Tensor:
    """Rebuild one layer's torchao weight from its flattened checkpoint tensors.

    :param metadata: the checkpoint's safetensors metadata when qcore could read it. With torchao
        metadata (``tensor_names``: what transformers writes) the layer's JSON must be there and is
        checked; without (checkpoints written by qcore), the layout comes from the config alone.
    """
    template = template_weight(module_name, module, config, dtype)
    if not any(k.startswith(WEIGHT_PREFIX) for k in tensors):
        stored = sorted(k for k in tensors if k != "bias")
        raise CheckpointError(
            f"{module_name}: a torchao checkpoint stores this layer as {WEIGHT_PREFIX}qdata, {WEIGHT_PREFIX}scale..., "
            f"but it holds {stored or 'nothing'}: is the checkpoint float or another method?"
        )
    stray = sorted(k for k in tensors if k != "bias" and not k.startswith(WEIGHT_PREFIX))
    if stray:
        raise CheckpointError(f"{module_name}: checkpoint holds {stray} beside this layer's torchao tensors; it is not a torchao layer")
    key = f"{module_name}.weight"
    if metadata and "tensor_names" in metadata:
        if key not in metadata:
            raise CheckpointError(
                f"{key}: the checkpoint's torchao metadata has no entry for this weight; the file is incomplete "
                "(re-save it with transformers or qcore)"
            )
        meta = parse_weight_metadata(module_name, metadata[key])
    else:
        meta = json.loads(weight_metadata(template))
    return rebuild_weight(module_name, tensors, meta, template)
