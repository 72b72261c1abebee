"""Small helpers to find and swap submodules by their dotted names."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: plugin modules import this one when they are listed
    import torch
    from torch import nn


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` ("" is the model itself)."""
    return model.get_submodule(name) if name else model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of the submodule called ``name``; returns the old module."""
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def owning_module_name(tensor_name: str, module_names: set[str]) -> str | None:
    """The longest module name that is a dotted prefix of ``tensor_name``.

    ``model.layers.0.q_proj.weight.absmax`` -> ``model.layers.0.q_proj`` when that is a module.
    """
    parts = tensor_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:cut])
        if candidate in module_names:
            return candidate
    return "" if "" in module_names else None


def linear_from_weight(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A float ``nn.Linear`` holding ``weight`` (out, in) and ``bias`` (out,), both frozen: the usual ``dequantize`` result."""
    from torch import nn

    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def expect_tensor(
    module_name: str,
    name: str,
    tensor: torch.Tensor,
    dtypes: tuple[torch.dtype, ...] | str,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Check one checkpoint tensor of a quantized module against its format; returns it.

    :param dtypes: the allowed dtypes, or ``"float"`` / ``"integer"`` for any floating / integer dtype.
    :param shape: the exact shape, when the format fixes it.
    :raises TensorMismatchError: naming ``module_name.name``, what it is and what the format needs.
    """
    import torch

    from qcore.errors import TensorMismatchError

    if dtypes == "float":
        ok = tensor.dtype.is_floating_point
    elif dtypes == "integer":
        ok = not tensor.dtype.is_floating_point and not tensor.dtype.is_complex and tensor.dtype != torch.bool
    else:
        ok = tensor.dtype in dtypes
    if not ok or (shape is not None and tuple(tensor.shape) != tuple(shape)):
        want = dtypes if isinstance(dtypes, str) else " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        want_shape = f" of shape {list(shape)}" if shape is not None else ""
        raise TensorMismatchError(
            f"{module_name}.{name} is {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}, but the format "
            f"needs {want}{want_shape}; the checkpoint is damaged or does not match its config.json"
        )
    return tensor
