"""AWQ on one decoder block: capture, scale search, folding, clip search, quantization.

The core calibration driver calls the plugin per linear (calibration_init, calibration_add_batch,
quantize_calibrated), but AWQ works per block: the q/k/v scales are judged by the attention
module's output, and they fold into the block's input norm. :class:`BlockRun` gathers what the
per-linear hooks see for a whole block, plus the inputs and keyword arguments (attention mask,
position embeddings) of the inspected modules, and does the block's work when the driver asks for
its first quantized linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qcore.errors import QcoreError

from .arch import NO_CLIP, ScaleGroup
from .format import AWQTensors
from .quantizer import quantize_weight
from .search import ScaleSearch, search_clip, search_scale


@dataclass
class BlockResult:
    """What AWQ chose for one block: scale ratios per group, clip thresholds per linear (for tests, logs)."""

    ratios: dict[tuple[str, ...], float] = field(default_factory=dict)
    searches: dict[tuple[str, ...], ScaleSearch] = field(default_factory=dict)
    clips: dict[str, torch.Tensor] = field(default_factory=dict)


class BlockRun:
    """One decoder block being calibrated.

    :param block: the float block; its norms and linears are changed in place (scales folded, clipped).
    :param targeted: the names (relative to the block) of the linears to quantize -> their group size.
    """

    def __init__(self, block: nn.Module, groups: list[ScaleGroup], targeted: dict[str, int]) -> None:
        self.block, self.groups, self.targeted = block, groups, targeted
        self.inputs: dict[str, list[torch.Tensor]] = {name: [] for name in targeted}
        self.inspect_kwargs: dict[str, list[dict[str, Any]]] = {}
        self.handles = []
        for group in groups:
            if group.inspect is not None:
                self.inspect_kwargs[group.inspect] = []
                module = block.get_submodule(group.inspect)
                self.handles.append(module.register_forward_pre_hook(self._recorder(group.inspect), with_kwargs=True))
        self.quantized: dict[str, AWQTensors] | None = None
        self.result = BlockResult()

    def _recorder(self, name: str):
        def record(_module: nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
            self.inspect_kwargs[name].append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        return record

    def add_batch(self, name: str, inputs: torch.Tensor) -> None:
        self.inputs[name].append(inputs)

    def close_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @torch.no_grad()
    def run(self) -> dict[str, AWQTensors]:
        """Search and fold the scales, search and apply the clips, quantize every targeted linear."""
        self.close_hooks()
        searches = []
        for group in self.groups:  # every search sees the float block, as in AutoAWQ
            first = group.linears[0]
            inputs = self.inputs[first]
            if group.inspect is None:
                inspect, kwargs = self.block.get_submodule(first), [{} for _ in inputs]
            else:
                inspect, kwargs = self.block.get_submodule(group.inspect), self.inspect_kwargs[group.inspect]
                if len(kwargs) != len(inputs):
                    raise QcoreError(f"AWQ saw {len(inputs)} batches reach {first} but {len(kwargs)} reach {group.inspect}")
            linears = [self.block.get_submodule(name) for name in group.linears]
            search = search_scale(inputs, kwargs, linears, inspect, self.targeted[first])
            searches.append((group, search))
            self.result.ratios[group.linears] = search.ratio
            self.result.searches[group.linears] = search
        for group, search in searches:
            fold_scales(self.block.get_submodule(group.prev), [self.block.get_submodule(n) for n in group.linears], search.scales)
            for name in group.linears:
                self.inputs[name] = [x / search.scales.view(1, -1).to(x.dtype) for x in self.inputs[name]]
        for name, group_size in self.targeted.items():
            if any(part in name for part in NO_CLIP):
                continue
            linear = self.block.get_submodule(name)
            max_val = search_clip(linear.weight.data, self.inputs[name], group_size)
            self.result.clips[name] = max_val
            shape = linear.weight.shape
            clipped = torch.clamp(linear.weight.data.reshape(*max_val.shape[:2], -1), -max_val, max_val)
            linear.weight.data = clipped.reshape(shape)
        self.inputs.clear()
        self.inspect_kwargs.clear()
        return {name: quantize_weight(self.block.get_submodule(name).weight, gs) for name, gs in self.targeted.items()}


@torch.no_grad()
def fold_scales(prev: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """Multiply the linears' input columns by ``scales`` and divide the preceding op's output by them.

    ``prev`` is a norm (its weight and bias are divided) or a linear (its last ``len(scales)``
    output rows and bias are divided); the block computes the same function afterwards.
    """
    if isinstance(prev, nn.Linear):
        prev.weight[-scales.numel():].div_(scales.view(-1, 1).to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias.div_(scales.view(-1).to(prev.bias.dtype))
    elif isinstance(getattr(prev, "weight", None), torch.Tensor) and prev.weight.dim() == 1:
        prev.weight.div_(scales.to(prev.weight.dtype))
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(scales.to(prev.bias.dtype))
    else:
        raise QcoreError(f"AWQ cannot fold scales into a {type(prev).__name__}; it folds into norms and linears")
    for fc in linears:
        fc.weight.mul_(scales.view(1, -1).to(fc.weight.dtype))
