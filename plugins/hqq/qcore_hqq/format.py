"""hqq's per-layer checkpoint tensors (``HQQLinear.state_dict()`` with ``encoded_state_dict``),
as ``AutoHQQHFModel.save_to_safetensors`` and transformers write them.

Per quantized Linear ``<m>``: ``<m>.W_q`` (packed codes, uint8; int32 for 3-bit), ``<m>.scale``
and ``<m>.zero`` (float, one per group), ``<m>.bias`` (when the layer has one), and small meta
tensors: ``shape`` (int64 [out, in]), ``nbits``/``group_size``/``axis`` (int32 scalars),
``packing``/``unpack_view_dtype``/``compute_dtype`` (uint8 character codes, e.g. "4bit_u8",
"torch.uint8", "torch.float16"), and uint8 flags ``view_as_float``, ``quant_scale``,
``quant_zero``, ``offload_meta``, ``encoded_state_dict``, ``stores_quant_config``,
``channel_wise``, ``optimize``, ``round_zero``.

Strings are decoded as characters and dtypes looked up by name: nothing is ever evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qcore.config import parse_dtype
from qcore.errors import CheckpointError, ConfigError, TensorMismatchError

from .bitpack import NBITS_BY_PACKING, PACKED_DTYPE, PACKING_BY_NBITS, packed_rows

REQUIRED = ("W_q", "scale", "zero", "shape", "nbits", "group_size", "axis", "packing")
FLAGS = ("view_as_float", "quant_scale", "quant_zero", "offload_meta", "encoded_state_dict", "stores_quant_config",
         "channel_wise", "optimize", "round_zero")
META_NAMES = (*REQUIRED, *FLAGS, "unpack_view_dtype", "compute_dtype")


@dataclass
class HqqMeta:
    """What hqq stores beside ``W_q``/``scale``/``zero`` for one layer."""

    nbits: int
    group_size: int
    axis: int
    shape: tuple[int, int]  # (out_features, in_features)
    channel_wise: bool = True
    optimize: bool = True
    round_zero: bool = False
    view_as_float: bool = False
    compute_dtype: str = "float32"

    @property
    def packing(self) -> str:
        return PACKING_BY_NBITS[self.nbits]

    def code_shape(self) -> tuple[int, int]:
        """The grouped layout of the codes: (numel/g, g) for axis 1, (g, numel/g) for axis 0."""
        numel = self.shape[0] * self.shape[1]
        if not self.channel_wise:
            return self.shape
        return (numel // self.group_size, self.group_size) if self.axis == 1 else (self.group_size, numel // self.group_size)

    def group_shape(self) -> tuple[int, ...]:
        """Shape of ``scale``/``zero``: (numel/g, 1) for axis 1, (1, numel/g) for axis 0, () per tensor."""
        if not self.channel_wise:
            return ()
        rows, cols = self.code_shape()
        return (rows, 1) if self.axis == 1 else (1, cols)


def check_grouping(module_name: str, shape: tuple[int, int], group_size: int, axis: int, nbits: int) -> None:
    """Raise ConfigError naming the module when hqq cannot group or pack this weight."""
    numel = shape[0] * shape[1]
    if numel % group_size:
        raise ConfigError(
            f"{module_name}: group_size {group_size} does not divide the weight {list(shape)} ({numel} values); "
            f"choose a group_size that divides it, or skip the module (modules_to_not_convert)"
        )
    rows = numel // group_size if axis == 1 else group_size
    per = {8: 1, 4: 2, 2: 4, 1: 8, 3: 1}[nbits]
    if rows % per:
        raise ConfigError(
            f"{module_name}: {nbits}-bit packing needs the {rows} grouped rows (axis {axis}) to be a multiple of {per}; "
            "choose another group_size or axis, or skip the module"
        )


def _int(module_name: str, tensors: dict[str, torch.Tensor], key: str) -> int:
    t = tensors[key]
    if t.numel() != 1 or t.dtype.is_floating_point:
        raise CheckpointError(f"{module_name}.{key}: expected one integer, got {t.dtype} {list(t.shape)}")
    return int(t.item())


def _text(module_name: str, tensors: dict[str, torch.Tensor], key: str) -> str:
    t = tensors[key]
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise CheckpointError(f"{module_name}.{key}: expected a uint8 string, got {t.dtype} {list(t.shape)}")
    return "".join(chr(c) for c in t.tolist())


def encode_text(text: str) -> torch.Tensor:
    return torch.tensor([ord(c) for c in text], dtype=torch.uint8)


def read_layer(module_name: str, tensors: dict[str, torch.Tensor], out_features: int,
               in_features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, HqqMeta]:
    """Check one layer's hqq tensors -> (W_q packed uint8/int32, scale, zero in the grouped shapes, meta)."""
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise CheckpointError(f"{module_name}: the hqq checkpoint lacks {missing} for this layer")
    unknown = sorted(set(tensors) - set(META_NAMES) - {"bias"})
    if unknown:
        raise CheckpointError(f"{module_name}: unexpected tensors {unknown} beside hqq's; this is not an hqq layer qcore reads")
    for key in ("quant_scale", "quant_zero"):
        if key in tensors and _int(module_name, tensors, key):
            raise CheckpointError(
                f"{module_name}: {key}=1 (quantized scale/zero, deprecated in hqq) is not supported; "
                "re-quantize the model with hqq >= 0.2 defaults"
            )
    if "zero_scale" in tensors:
        raise CheckpointError(f"{module_name}: zero_scale (offload_meta, deprecated in hqq) is not supported")
    packing = _text(module_name, tensors, "packing")
    if packing not in NBITS_BY_PACKING:
        raise CheckpointError(
            f"{module_name}: unknown hqq packing {packing!r}; qcore reads {sorted(NBITS_BY_PACKING)}"
        )
    nbits = _int(module_name, tensors, "nbits")
    if PACKING_BY_NBITS.get(nbits) != packing:
        raise CheckpointError(f"{module_name}: nbits={nbits} does not go with packing {packing!r}")
    axis = _int(module_name, tensors, "axis")
    if axis not in (0, 1):
        raise CheckpointError(f"{module_name}: axis={axis}; hqq groups along axis 0 or 1 only")
    shape_t = tensors["shape"]
    if shape_t.dtype.is_floating_point or shape_t.dim() != 1 or shape_t.numel() != 2:
        raise CheckpointError(f"{module_name}.shape: expected 2 integers [out, in], got {shape_t.dtype} {list(shape_t.shape)}")
    shape = tuple(int(v) for v in shape_t.tolist())
    if shape != (out_features, in_features):
        raise TensorMismatchError(
            f"{module_name}: hqq shape is {list(shape)} but the model's layer is [{out_features}, {in_features}]; "
            "the checkpoint does not belong to this model"
        )
    flags = {k: bool(_int(module_name, tensors, k)) for k in FLAGS if k in tensors}
    meta = HqqMeta(
        nbits=nbits, group_size=_int(module_name, tensors, "group_size"), axis=axis, shape=shape,
        channel_wise=flags.get("channel_wise", True), optimize=flags.get("optimize", True),
        round_zero=flags.get("round_zero", False), view_as_float=flags.get("view_as_float", False),
    )
    if "unpack_view_dtype" in tensors and _text(module_name, tensors, "unpack_view_dtype") != str(PACKED_DTYPE[packing]):
        raise CheckpointError(
            f"{module_name}: unpack_view_dtype {_text(module_name, tensors, 'unpack_view_dtype')!r} does not go with "
            f"packing {packing!r} ({PACKED_DTYPE[packing]})"
        )
    if "compute_dtype" in tensors:
        try:
            dtype = parse_dtype(_text(module_name, tensors, "compute_dtype"), f"{module_name}.compute_dtype")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        if not dtype.is_floating_point:
            raise CheckpointError(f"{module_name}.compute_dtype: {dtype} is not a floating-point dtype")
        meta.compute_dtype = str(dtype).removeprefix("torch.")
    if meta.channel_wise:
        if meta.group_size <= 0:
            raise CheckpointError(f"{module_name}: group_size={meta.group_size} must be positive")
        try:
            check_grouping(module_name, shape, meta.group_size, axis, nbits)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
    W_q = tensors["W_q"]
    if meta.view_as_float:
        if not W_q.dtype.is_floating_point:
            raise CheckpointError(f"{module_name}: view_as_float is set but W_q is {W_q.dtype}")
        W_q = W_q.contiguous().view(PACKED_DTYPE[packing])
    rows, cols = meta.code_shape()
    expected = (packed_rows(packing, rows), cols)
    if W_q.dtype != PACKED_DTYPE[packing] or tuple(W_q.shape) != expected:
        raise CheckpointError(
            f"{module_name}: W_q is {W_q.dtype} {list(W_q.shape)}, but shape {list(shape)} with nbits={nbits}, "
            f"group_size={meta.group_size}, axis={axis} needs {PACKED_DTYPE[packing]} {list(expected)}"
        )
    groups = math.prod(meta.group_shape())
    scale, zero = tensors["scale"], tensors["zero"]
    for key, t in (("scale", scale), ("zero", zero)):
        if not t.dtype.is_floating_point or t.numel() != groups:
            raise CheckpointError(
                f"{module_name}: {key} is {t.dtype} {list(t.shape)}; expected {groups} floating-point values (one per group)"
            )
    return W_q, scale.reshape(meta.group_shape()), zero.reshape(meta.group_shape()), meta


def layer_tensors(W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, meta: HqqMeta,
                  bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One layer's tensors exactly as hqq's ``HQQLinear.state_dict()`` encodes them."""
    compute_dtype = getattr(torch, meta.compute_dtype)
    stored = W_q.view(compute_dtype) if meta.view_as_float else W_q

    def flag(value: bool) -> torch.Tensor:
        return torch.tensor(int(value), dtype=torch.uint8)

    def int32(value: int) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.int32)

    state = {
        "W_q": stored,
        "nbits": int32(meta.nbits),
        "group_size": int32(meta.group_size),
        "shape": torch.tensor(meta.shape),
        "scale": scale,
        "zero": zero,
        "axis": int32(meta.axis),
        "packing": encode_text(meta.packing),
        "unpack_view_dtype": encode_text(str(PACKED_DTYPE[meta.packing])),
        "view_as_float": flag(meta.view_as_float),
        "quant_scale": flag(False),
        "quant_zero": flag(False),
        "compute_dtype": encode_text(f"torch.{meta.compute_dtype}"),
    }
    if bias is not None:
        state["bias"] = bias
    state.update({
        "offload_meta": flag(False),
        "encoded_state_dict": flag(True),
        "stores_quant_config": flag(True),
        "channel_wise": flag(meta.channel_wise),
        "optimize": flag(meta.optimize),
        "round_zero": flag(meta.round_zero),
    })
    return state
