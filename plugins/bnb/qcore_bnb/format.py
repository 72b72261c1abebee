"""bitsandbytes' checkpoint layout, as transformers + bitsandbytes write it.

4-bit module ``m``::

    m.weight                                   uint8 (ceil(n/2), 1)   packed indices (or viewed as quant_storage)
    m.weight.absmax                            float32 (blocks,)       or uint8 (blocks,) with double quant
    m.weight.quant_map                         float32 (16,)           the NF4/FP4 code
    m.weight.nested_absmax                     float32 (nested blocks,)     double quant only
    m.weight.nested_quant_map                  float32 (256,)               double quant only
    m.weight.quant_state.bitsandbytes__nf4     uint8 JSON: quant_type, blocksize, dtype, shape
                                               (+ nested_blocksize, nested_dtype, nested_offset)

8-bit module: ``m.weight`` int8 (out, in), ``m.SCB`` float32 (out,), ``m.weight_format`` uint8 scalar (0 = row).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from qcore.errors import CheckpointError
from qcore.modules import expect_tensor

QUANT_STATE_PREFIX = "weight.quant_state.bitsandbytes__"
FOUR_BIT_KEYS = ("weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map")
EIGHT_BIT_KEYS = ("SCB", "weight_format")


@dataclass
class QuantState4bit:
    """Everything needed to dequantize one 4-bit weight."""

    quant_type: str
    blocksize: int
    dtype: str
    shape: tuple[int, ...]
    absmax: torch.Tensor  # float32, or uint8 when nested
    quant_map: torch.Tensor
    nested_absmax: torch.Tensor | None = None
    nested_quant_map: torch.Tensor | None = None
    nested_blocksize: int | None = None
    nested_dtype: str | None = None
    nested_offset: float | None = None

    @property
    def nested(self) -> bool:
        return self.nested_absmax is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of this state (names relative to the module), JSON packed as bitsandbytes does."""
        info: dict[str, object] = {"quant_type": self.quant_type, "blocksize": self.blocksize, "dtype": self.dtype,
                                   "shape": list(self.shape)}
        out = {"weight.absmax": self.absmax, "weight.quant_map": self.quant_map}
        if self.nested:
            info.update(nested_blocksize=self.nested_blocksize, nested_dtype=self.nested_dtype, nested_offset=self.nested_offset)
            out["weight.nested_absmax"] = self.nested_absmax
            out["weight.nested_quant_map"] = self.nested_quant_map
        out[QUANT_STATE_PREFIX + self.quant_type] = torch.tensor(list(json.dumps(info).encode("utf-8")), dtype=torch.uint8)
        return out


def checkpoint_kind(module_name: str, tensors: dict[str, torch.Tensor]) -> str:
    """ "4bit", "8bit" or "float" from a module's tensor names; mixed layouts are an error."""
    four = [k for k in tensors if k in FOUR_BIT_KEYS or k.startswith(QUANT_STATE_PREFIX)]
    eight = [k for k in tensors if k in EIGHT_BIT_KEYS]
    if four and eight:
        raise CheckpointError(
            f"{module_name}: holds both 4-bit ({', '.join(sorted(four))}) and 8-bit ({', '.join(sorted(eight))}) "
            "tensors; the checkpoint is corrupt or was merged from two saves"
        )
    return "4bit" if four else "8bit" if eight else "float"


def read_quant_state(module_name: str, tensors: dict[str, torch.Tensor], out_features: int, in_features: int) -> QuantState4bit:
    """Parse and check a module's 4-bit state; errors name the module and what is wrong."""
    states = [k for k in tensors if k.startswith(QUANT_STATE_PREFIX)]
    if len(states) != 1:
        raise CheckpointError(
            f"{module_name}: expected one '{QUANT_STATE_PREFIX}nf4|fp4' tensor, found {states or 'none'}; "
            "the checkpoint is incomplete"
        )
    for key in ("weight", "weight.absmax", "weight.quant_map"):
        if key not in tensors:
            raise CheckpointError(f"{module_name}: 4-bit checkpoint lacks '{key}'; the checkpoint is incomplete")
    raw = tensors[states[0]]
    expect_tensor(module_name, states[0], raw, (torch.uint8,))
    if raw.dim() != 1:
        raise CheckpointError(f"{module_name}.{states[0]} must be a 1-D byte string, has shape {list(raw.shape)}")
    try:
        info = json.loads(bytes(raw.tolist()).decode("utf-8"))
        quant_type, blocksize, dtype, shape = info["quant_type"], info["blocksize"], info["dtype"], info["shape"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{module_name}: quant_state JSON does not parse ({exc}); the checkpoint is corrupt") from exc
    if not _positive_int(blocksize) or not isinstance(shape, list) or not all(_positive_int(d) for d in shape) \
            or not isinstance(dtype, str):
        raise CheckpointError(
            f"{module_name}: quant_state has blocksize {blocksize!r}, shape {shape!r}, dtype {dtype!r}; expected a "
            "positive integer, a list of positive integers and a dtype name"
        )
    shape = tuple(shape)
    if quant_type not in ("nf4", "fp4") or states[0] != QUANT_STATE_PREFIX + quant_type:
        raise CheckpointError(f"{module_name}: quant_state names quant_type {quant_type!r} under {states[0]!r}")
    if shape != (out_features, in_features):
        raise CheckpointError(f"{module_name}: quant_state shape {list(shape)} does not match the layer ({out_features}, {in_features})")
    n = math.prod(shape)
    packed_bytes = tensors["weight"].numel() * tensors["weight"].element_size()
    if packed_bytes != (n + 1) // 2:
        raise CheckpointError(f"{module_name}: packed weight has {packed_bytes} bytes, but shape {list(shape)} needs {(n + 1) // 2}")
    nested = "nested_offset" in info
    absmax = expect_tensor(module_name, "weight.absmax", tensors["weight.absmax"], (torch.uint8,) if nested else "float",
                           (-(-n // blocksize),))
    quant_map = expect_tensor(module_name, "weight.quant_map", tensors["weight.quant_map"], "float", (16,))
    state = QuantState4bit(quant_type, blocksize, dtype, shape, absmax, quant_map.float())
    if nested:
        for key in ("weight.nested_absmax", "weight.nested_quant_map"):
            if key not in tensors:
                raise CheckpointError(f"{module_name}: double-quantized checkpoint lacks '{key}'")
        nested_blocksize, offset = info.get("nested_blocksize"), info.get("nested_offset")
        if not _positive_int(nested_blocksize) or isinstance(offset, bool) or not isinstance(offset, int | float) \
                or not math.isfinite(offset):
            raise CheckpointError(
                f"{module_name}: quant_state has nested_blocksize {nested_blocksize!r} and nested_offset {offset!r}; "
                "expected a positive integer and a finite number"
            )
        state.nested_blocksize, state.nested_dtype = nested_blocksize, info.get("nested_dtype", "float32")
        state.nested_offset = float(offset)
        state.nested_absmax = expect_tensor(module_name, "weight.nested_absmax", tensors["weight.nested_absmax"], "float",
                                            (-(-absmax.numel() // nested_blocksize),))
        state.nested_quant_map = expect_tensor(module_name, "weight.nested_quant_map", tensors["weight.nested_quant_map"],
                                               "float", (256,)).float()
    return state


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
