"""save_quantized: sharded safetensors + index + config.json, written atomically.

Everything is written into a temporary directory beside the target, which is
renamed into place only when complete: an error or crash leaves no half
checkpoint, and an existing target is kept unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcore.checkpoint import INDEX_NAME, SINGLE_NAME
from qcore.errors import QcoreError, TargetExistsError
from qcore.modules import get_module
from qcore.plugins import registry

_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "5GB" or "500MiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", size.upper())
    if not match:
        raise ValueError(f"cannot read size {size!r}; use bytes or e.g. '5GB', '500MiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint: quantized modules as their plugin names them, the rest as is.

    Tensors that share storage (tied embeddings) are written once, under the first name.
    """
    config = getattr(model, "qcore_config", None)
    modules: dict[str, Any] = getattr(model, "qcore_modules", {}) or {}
    hooks = registry().hook(config) if config is not None else None
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        if not any(name.startswith(m + ".") for m in modules):
            state[name] = tensor
    for module_name, module_config in modules.items():
        module = get_module(model, module_name)
        tensors = hooks.module_state_dict(module_name=module_name, module=module, config=module_config)
        if tensors is None:
            tensors = module.state_dict()
        for rel, tensor in tensors.items():
            state[f"{module_name}.{rel}"] = tensor
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    deduped: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            raise QcoreError(f"tensor {name!r} is on the meta device (never loaded); cannot save")
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key[0] and key in seen:
            continue
        seen[key] = name
        deduped[name] = tensor
    return deduped


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_quantized(
    model: nn.Module,
    path: str | Path,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint that qcore, transformers and vLLM read.

    :param model: a model returned by load_quantized or quantize.
    :param path: the target directory.
    :param max_shard_size: bytes per shard (int, or "5GB"/"500MiB").
    :param overwrite: replace an existing target (it is removed only after the new one is complete).
    :param tokenizer: saved beside the weights when given (``save_pretrained``).
    :param config: the model's config.json dict, for models without an HF ``config`` attribute.
    :returns: the target path.
    """
    from safetensors.torch import save_file

    target = Path(path)
    if target.exists() and not overwrite:
        raise TargetExistsError(f"{target} already exists; choose another path or pass overwrite=True")
    qconfig = getattr(model, "qcore_config", None)
    if qconfig is not None and registry().hook(qconfig).is_serializable(config=qconfig) is False:
        raise QcoreError(f"models quantized with {qconfig.quant_method!r} cannot be saved by its plugin")
    state = quantized_state_dict(model)
    shards = _shards(state, parse_size(max_shard_size))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards, start=1):
            file_name = SINGLE_NAME if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in shard.items()}
            save_file(tensors, str(tmp / file_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file_name))
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        config_dict = _config_dict(model, config)
        if qconfig is not None:
            config_dict["quantization_config"] = qconfig.to_dict()
        (tmp / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None and hasattr(generation_config, "to_json_file"):
            generation_config.to_json_file(tmp / "generation_config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _config_dict(model: nn.Module, config: dict[str, Any] | None) -> dict[str, Any]:
    if config is not None:
        return dict(config)
    hf_config = getattr(model, "config", None)
    if hf_config is not None and hasattr(hf_config, "to_dict"):
        data = hf_config.to_dict()
        data.pop("quantization_config", None)
        if not data.get("architectures"):
            data["architectures"] = [type(model).__name__]  # as save_pretrained does
        return data
    return {}


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` to ``target``; an old target is removed only after the move."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
