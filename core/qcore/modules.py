"""Small helpers to find and swap submodules by their dotted names."""

from __future__ import annotations

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
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear
