"""Quantization configs: one dataclass per method, serialized as Hugging Face does.

A plugin subclasses :class:`QuantizationConfig` as a ``@dataclass``, sets the class
attribute ``quant_method`` and returns the class from ``qcore_register_methods``.
Fields are the keys of ``quantization_config`` in config.json, named exactly as
Hugging Face transformers names them, so checkpoints are interchangeable.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qcore.errors import ConfigError


@dataclass
class QuantizationConfig:
    """Base of every method's config.

    Class attributes a subclass sets:

    - ``quant_method``: the method name, as in config.json.
    - ``requires_calibration``: True when quantizing needs data (GPTQ, AWQ).
    - ``next_block_inputs``: with calibration, what the next decoder block sees: "quantized" (the
      default, as GPTQ: each block's outputs recomputed with its quantized linears) or "float" (as
      AutoAWQ: each block's outputs before it is quantized, so every block is searched on the float
      model's activations).
    - ``known_foreign_keys``: keys other tools write into ``quantization_config`` that
      this method may ignore when reading a checkpoint (kept and written back as they were).

    Fields shared by every method (targeting, see qcore.targeting):

    - ``modules_to_not_convert``: module names or patterns left in float.
    - ``module_overrides``: pattern -> {field: value}, a per-module variant of this config.
    """

    quant_method: ClassVar[str] = ""
    requires_calibration: ClassVar[bool] = False
    next_block_inputs: ClassVar[str] = "quantized"
    known_foreign_keys: ClassVar[frozenset[str]] = frozenset()

    modules_to_not_convert: list[str] | None = None
    module_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # keys read from a checkpoint that this class does not model; written back unchanged
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.check_types()
        self.validate()

    def check_types(self) -> None:
        """Enforce the dataclass annotations: ``bits="4"``, ``bits=4.0`` or ``sym="false"`` is a ConfigError naming the key.

        An ``int`` is accepted where a ``float`` is annotated; ``Any`` accepts everything.
        """
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name == "extra" or f.name not in hints:
                continue
            value = getattr(self, f.name)
            if not _fits(value, hints[f.name]):
                raise ConfigError(
                    f"{self.quant_method!r} config key {f.name!r} must be {_describe(hints[f.name])}, "
                    f"got {value!r} ({type(value).__name__})"
                )

    def validate(self) -> None:
        """Raise ConfigError when a value or combination is invalid. Subclasses extend it (types are already checked)."""
        from qcore.targeting import check_pattern

        for pattern in self.modules_to_not_convert or []:
            check_pattern(pattern, "modules_to_not_convert")
        for pattern, overrides in self.module_overrides.items():
            check_pattern(pattern, "module_overrides")
            if not isinstance(overrides, dict):
                raise ConfigError(f"module_overrides[{pattern!r}] must be a dict of config fields, got {overrides!r}")
            fields = {k: v for k, v in overrides.items() if k != "skip"}  # "skip": leave in float
            _check_keys(type(self), fields, where=f"module_overrides[{pattern!r}]")

    # --- (de)serialization -------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    def to_dict(self) -> dict[str, Any]:
        """The ``quantization_config`` dict of config.json (``quant_method`` first)."""
        out: dict[str, Any] = {"quant_method": self.quant_method}
        for name in self.field_names():
            value = getattr(self, name)
            if name == "module_overrides" and not value:
                continue
            out[name] = _jsonable(value)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> QuantizationConfig:
        """Build a config from a ``quantization_config`` dict.

        :param strict: True for user input (an unknown key is an error suggesting the
            closest valid one); False for a checkpoint's config.json, where keys that
            other tools write are kept in ``extra`` (unknown ones with a warning).
        """
        data = dict(data)
        method = data.pop("quant_method", cls.quant_method)
        if method != cls.quant_method:
            raise ConfigError(f"{cls.__name__} serves quant_method {cls.quant_method!r}, not {method!r}")
        names = set(cls.field_names())
        unknown = {k: v for k, v in data.items() if k not in names}
        if strict:
            foreign = {k: v for k, v in unknown.items() if k not in cls.known_foreign_keys}
            _check_keys(cls, foreign, where=f"{cls.quant_method!r} config")
        extra = {}
        for key, value in unknown.items():
            if key not in cls.known_foreign_keys:
                warnings.warn(
                    f"quantization_config key {key!r} is not used by qcore's {cls.quant_method!r} plugin; "
                    "it is kept and written back unchanged",
                    stacklevel=2,
                )
            extra[key] = value
        known = {k: v for k, v in data.items() if k in names}
        cfg = cls(**known)
        cfg.extra = extra
        return cfg

    def replace(self, **changes: Any) -> QuantizationConfig:
        """A copy with ``changes`` applied (used for per-module overrides)."""
        _check_keys(type(self), changes, where=f"{self.quant_method!r} config")
        new = dataclasses.replace(self, **changes)
        new.extra = dict(self.extra)
        return new


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be evaluated here: leave those fields to validate()
        return {}


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` is an instance of the annotation ``tp`` (the JSON-ish subset configs use)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_fits(v, args[0]) for v in value)
    if origin is dict:
        args = typing.get_args(tp)
        if not isinstance(value, dict):
            return False
        return not args or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # annotations this check does not model


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(tp)[0])}" if typing.get_args(tp) else "a list"
    if origin is dict:
        return "an object (dict)"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_keys(cls: type[QuantizationConfig], data: dict[str, Any], where: str) -> None:
    names = cls.field_names()
    for key in data:
        if key in names:
            continue
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(names))}"
        raise ConfigError(f"unknown key {key!r} in {where}; {hint}")


def _jsonable(value: Any) -> Any:
    """Turn dtypes and tuples into what json can write (HF writes dtypes as 'float16')."""
    import sys

    torch = sys.modules.get("torch")  # no torch imported: no value can be a torch.dtype (keeps `qcore plugins` light)
    if torch is not None and isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def parse_dtype(value: Any, what: str) -> Any:
    """Accept a torch.dtype or its name ("bfloat16", "torch.float16"); None stays None."""
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(dtype, torch.dtype):
            return dtype
    raise ConfigError(f"{what} must be a torch dtype or its name (e.g. 'bfloat16'), got {value!r}")
