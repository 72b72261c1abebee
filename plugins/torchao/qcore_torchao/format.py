"""The safetensors layout transformers + torchao write: flattened tensor subclasses plus JSON metadata.

A torchao weight (``Int8Tensor``, ``Float8Tensor``, ``IntxUnpackedToInt8Tensor``...) of module ``m``
is stored as plain tensors ``m._weight_<data name>`` (``_weight_qdata``, ``_weight_scale``,
``_weight_zero_point``...), and the safetensors file metadata holds, under the key ``m.weight``,
the JSON of the subclass's attributes (``{"_type": "Int8Tensor", "_data": {"block_size": ...},
"_tensor_data_names": [...]}``, written by torchao's ``TensorSubclassAttributeJSONEncoder``),
plus ``tensor_names`` (every tensor name of the state dict) and ``{"_type": "Tensor"}`` for
plain tensors. This is torchao's ``flatten_tensor_state_dict`` / ``unflatten_tensor_state_dict``;
this module applies it to one module at a time (qcore streams module by module) and checks what
it reads against the layout torchao gives a freshly quantized weight of the same shape.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from qcore.errors import CheckpointError, TensorMismatchError

WEIGHT_PREFIX = "_weight_"


def data_names(weight: torch.Tensor) -> list[str]:
    """The inner tensor names a torchao weight is flattened into, in torchao's order (None ones left out)."""
    names = list(weight.tensor_data_names) + list(getattr(weight, "optional_tensor_data_names", None) or [])
    return [n for n in names if getattr(weight, n) is not None]


def flatten_weight(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A torchao weight -> ``{"_weight_qdata": ..., "_weight_scale": ...}`` (views, not copies)."""
    return {WEIGHT_PREFIX + name: getattr(weight, name) for name in data_names(weight)}


def weight_metadata(weight: torch.Tensor) -> str:
    """The JSON transformers + torchao write into the safetensors metadata for this weight."""
    from torchao.prototype.safetensors.safetensors_utils import TensorSubclassAttributeJSONEncoder

    return json.dumps(weight, cls=TensorSubclassAttributeJSONEncoder)


def checkpoint_metadata(state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """The safetensors metadata of a checkpoint, as transformers + torchao write it.

    :param state: every plain tensor of the checkpoint (name -> tensor), quantized modules' flattened
        tensors included (they are not listed in ``tensor_names``).
    :param weights: full weight name (``model.layers.0.mlp.up_proj.weight``) -> torchao weight.
    :returns: ``{"format": "pt", "tensor_names": ..., <name>: <JSON>}``.
    """
    flattened = {f"{name.rpartition('.')[0]}.{WEIGHT_PREFIX}" for name in weights}
    plain = [n for n in state if not any(n.startswith(p) for p in flattened)]
    metadata = {"format": "pt"}
    for name in plain:
        metadata[name] = json.dumps({"_type": "Tensor"})
    for name, weight in weights.items():
        metadata[name] = weight_metadata(weight)
    metadata["tensor_names"] = json.dumps(plain + list(weights))
    return metadata


def parse_weight_metadata(module_name: str, raw: str) -> dict[str, Any]:
    """The JSON of ``<module>.weight`` from a checkpoint's metadata, checked to describe a torchao tensor."""
    from torchao.prototype.safetensors.safetensors_utils import ALLOWED_TENSORS_SUBCLASSES

    where = f"{module_name}.weight"
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where}: the safetensors metadata for this weight is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("_data"), dict) or not isinstance(meta.get("_tensor_data_names"), list):
        raise CheckpointError(f"{where}: the safetensors metadata is not a torchao tensor description: {raw[:200]}")
    if meta.get("_type") not in ALLOWED_TENSORS_SUBCLASSES:
        raise CheckpointError(
            f"{where}: the metadata names tensor type {meta.get('_type')!r}; torchao reads {', '.join(ALLOWED_TENSORS_SUBCLASSES)}"
        )
    return meta


def rebuild_weight(module_name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   template: torch.Tensor) -> torch.Tensor:
    """The torchao weight of one module from its flattened tensors and metadata JSON.

    ``template`` is what torchao makes of an empty meta tensor of the module's shape with the module's
    config: the metadata must describe the same tensor type and layout, and every stored tensor
    must have the template's name, shape and integer/float8 dtype. The weight is then built by
    torchao's own ``object_from_dict``.
    """
    from torchao.prototype.safetensors.safetensors_utils import object_from_dict

    where = f"{module_name}.weight"
    expected_type = type(template).__name__
    if meta["_type"] != expected_type:
        raise CheckpointError(
            f"{where}: the checkpoint's metadata says {meta['_type']}, but its quantization_config makes {expected_type}: "
            "the metadata and config.json disagree (was the checkpoint edited?)"
        )
    expected_names = data_names(template)
    stored = {k[len(WEIGHT_PREFIX):]: v for k, v in tensors.items() if k.startswith(WEIGHT_PREFIX)}
    declared = meta["_tensor_data_names"]
    if sorted(declared) != sorted(stored):
        raise CheckpointError(
            f"{where}: the metadata lists tensors {sorted(declared)} but the checkpoint holds "
            f"{sorted(WEIGHT_PREFIX + n for n in stored)}; a tensor is missing or the metadata is wrong"
        )
    missing = sorted(set(expected_names) - set(stored))
    if missing:
        raise CheckpointError(f"{where}: checkpoint lacks {[WEIGHT_PREFIX + n for n in missing]} of this {expected_type}")
    for name in expected_names:
        want, got = getattr(template, name), stored[name]
        # scales may be stored in another float dtype (a bfloat16 checkpoint loaded in float32): converted below
        rescalable = _wide_float(got.dtype) and _wide_float(want.dtype)
        if tuple(got.shape) != tuple(want.shape) or (got.dtype != want.dtype and not rescalable):
            raise TensorMismatchError(
                f"{module_name}.{WEIGHT_PREFIX}{name} is {got.dtype} {list(got.shape)} in the checkpoint; this layer's "
                f"{expected_type} needs {want.dtype} {list(want.shape)}"
            )
        stored[name] = got.to(want.dtype)
    _check_attributes(where, meta["_data"], json.loads(weight_metadata(template))["_data"])
    data = dict(meta["_data"])
    data.update(stored)
    if "dtype" in data:  # Int4Tensor has none: its dtype is its scale's, converted to the template's above
        data["dtype"] = template.dtype  # the layer's compute dtype (the skeleton's), as quantizing it here would give
    try:
        weight = object_from_dict({"_type": meta["_type"], "_data": data})
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as exc:
        raise CheckpointError(f"{where}: torchao cannot rebuild the weight from the checkpoint's metadata: {exc}") from exc
    if tuple(weight.shape) != tuple(template.shape):
        raise TensorMismatchError(f"{where}: rebuilt weight has shape {list(weight.shape)}, the layer needs {list(template.shape)}")
    return weight


def _wide_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize > 1


def _check_attributes(where: str, stored: dict[str, Any], expected: dict[str, Any]) -> None:
    """The layout attributes (block size, target dtype...) of the metadata must be the config's; ``dtype`` may differ."""
    for key, want in expected.items():
        if key == "dtype":  # the compute dtype: the checkpoint may have been written in bfloat16, loaded in float32
            continue
        if key not in stored:
            raise CheckpointError(f"{where}: the metadata lacks attribute {key!r} of this tensor type")
        if stored[key] != want:
            raise CheckpointError(
                f"{where}: the metadata says {key}={json.dumps(stored[key])} but the quantization_config and the "
                f"tensors' shapes give {json.dumps(want)}: the metadata disagrees with the checkpoint"
            )
