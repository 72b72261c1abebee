"""HqqConfig: ``quant_method: "hqq"``, serialized as transformers' ``HqqConfig.to_dict()`` writes it.

In config.json::

    {"quant_method": "hqq",
     "quant_config": {"weight_quant_params": {"nbits": 4, "channel_wise": true, "group_size": 64,
                                              "optimize": true, "round_zero": true, "axis": 1,
                                              "view_as_float": false},
                      "scale_quant_params": null, "zero_quant_params": null, "offload_meta": false},
     "skip_modules": ["lm_head"]}

The dataclass holds the weight parameters flat (``nbits``, ``group_size``, ...) so that
per-module overrides (``module_overrides={"down_proj": {"nbits": 8}}``) and the CLI's
``--bits/--group-size`` work as for every other method; ``from_dict`` reads both the nested
form above and the flat one (``bits`` is an alias of ``nbits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qcore.config import QuantizationConfig
from qcore.errors import ConfigError

SUPPORTED_NBITS = (1, 2, 3, 4, 8)
WEIGHT_PARAMS = ("nbits", "channel_wise", "group_size", "optimize", "round_zero", "axis", "view_as_float")
QUANT_CONFIG_KEYS = ("weight_quant_params", "scale_quant_params", "zero_quant_params", "offload_meta")


def default_round_zero(nbits: int) -> bool:
    """hqq's ``BaseQuantizeConfig``: round the zero point for 4-bit only."""
    return nbits == 4


@dataclass
class HqqConfig(QuantizationConfig):
    """HQQ weight quantization: ``W ≈ (W_q - zero) * scale`` per group, zero and scale in float.

    - ``nbits``: 1, 2, 3, 4 or 8 bits per weight.
    - ``group_size``: weights per (scale, zero) pair; None: one group per row (axis 1) or column (axis 0).
    - ``axis``: 1 groups consecutive weights of a row (transformers' default), 0 groups down the columns.
    - ``optimize``: run the half-quadratic solver on the zero point (else plain min/max).
    - ``round_zero``: round the initial zero point (default: True for 4-bit, as hqq).
    - ``channel_wise``: False uses one scale and zero for the whole tensor (and no solver).
    - ``view_as_float``: store ``W_q`` viewed as the compute dtype (hqq's FSDP trick).
    - ``scale_quant_params`` / ``zero_quant_params`` / ``offload_meta``: hqq's deprecated meta-data
      quantization and offloading; only their off values (None, None, False) are accepted.
    - ``skip_modules``: linear layers left in float (transformers' name), default ``["lm_head"]``.
    """

    quant_method = "hqq"

    nbits: int = 4
    group_size: int | None = 64
    axis: int = 1
    optimize: bool = True
    round_zero: bool | None = None
    channel_wise: bool = True
    view_as_float: bool = False
    scale_quant_params: dict[str, Any] | None = None
    zero_quant_params: dict[str, Any] | None = None
    offload_meta: bool = False
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])

    def validate(self) -> None:
        super().validate()
        if isinstance(self.nbits, float) and self.nbits.is_integer():
            self.nbits = int(self.nbits)
        if isinstance(self.nbits, bool) or self.nbits not in SUPPORTED_NBITS:
            raise ConfigError(f"hqq config: nbits must be one of {SUPPORTED_NBITS}, got {self.nbits!r}")
        if self.group_size == -1:  # the "no groups" spelling of GPTQ-style CLIs
            self.group_size = None
        if self.group_size is not None and (
            isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0
            or self.group_size % 8
        ):
            raise ConfigError(f"hqq config: group_size must be a positive multiple of 8 or None, got {self.group_size!r}")
        if self.axis not in (0, 1) or isinstance(self.axis, bool):
            raise ConfigError(f"hqq config: axis must be 0 or 1, got {self.axis!r}")
        for name in ("optimize", "channel_wise", "view_as_float", "offload_meta"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"hqq config: {name} must be true or false, got {getattr(self, name)!r}")
        if self.round_zero is None:
            self.round_zero = default_round_zero(self.nbits)
        if not isinstance(self.round_zero, bool):
            raise ConfigError(f"hqq config: round_zero must be true or false, got {self.round_zero!r}")
        for name in ("scale_quant_params", "zero_quant_params"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"hqq config: {name} is set, but quantized scales/zeros are deprecated in hqq (it ignores them) and "
                    f"cannot be serialized; set {name} to null"
                )
        if self.offload_meta:
            raise ConfigError("hqq config: offload_meta=true (deprecated meta-data offloading in hqq) is not supported; set it to false")
        if not isinstance(self.skip_modules, list) or not all(isinstance(m, str) for m in self.skip_modules):
            raise ConfigError(f"hqq config: skip_modules must be a list of module names, got {self.skip_modules!r}")
        if self.modules_to_not_convert is None:
            # transformers: skip_modules replaces the default skip list
            self.modules_to_not_convert = list(self.skip_modules)

    # --- the weight parameters as hqq names them -----------------------------------------------
    def weight_quant_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in WEIGHT_PARAMS}

    # --- (de)serialization in transformers' layout ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "quant_method": self.quant_method,
            "quant_config": {
                "weight_quant_params": self.weight_quant_params(),
                "scale_quant_params": self.scale_quant_params,
                "zero_quant_params": self.zero_quant_params,
                "offload_meta": self.offload_meta,
            },
            "skip_modules": list(self.skip_modules),
        }
        if self.modules_to_not_convert != self.skip_modules:
            out["modules_to_not_convert"] = self.modules_to_not_convert
        if self.module_overrides:
            out["module_overrides"] = self.module_overrides
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> HqqConfig:
        return super().from_dict(flatten(data), strict=strict)

    def replace(self, **changes: Any) -> HqqConfig:
        changes = flatten(changes)
        if "nbits" in changes and "round_zero" not in changes and self.round_zero == default_round_zero(self.nbits):
            changes["round_zero"] = None  # follow the new nbits, as hqq's BaseQuantizeConfig does
        return super().replace(**changes)


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """The nested ``quant_config`` form (and the ``bits`` alias) -> flat dataclass keys."""
    data = dict(data)
    if "bits" in data:
        bits = data.pop("bits")
        if "nbits" in data and data["nbits"] != bits:
            raise ConfigError(f"hqq config: bits={bits!r} and nbits={data['nbits']!r} disagree; give one of them")
        data["nbits"] = bits
    if "quant_config" not in data:
        return data
    quant_config = data.pop("quant_config")
    if not isinstance(quant_config, dict):
        raise ConfigError(f"hqq config: quant_config must be a dict, got {quant_config!r}")
    if "weight_quant_params" not in quant_config:
        raise ConfigError(
            "hqq config: quant_config has no 'weight_quant_params'. A per-layer quant_config (transformers' "
            "dynamic_config) is not supported; use module_overrides={pattern: {'nbits': ...}} instead"
        )
    unknown = set(quant_config) - set(QUANT_CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"hqq config: unknown key(s) {sorted(unknown)} in quant_config; valid: {list(QUANT_CONFIG_KEYS)}")
    weight = quant_config["weight_quant_params"]
    if not isinstance(weight, dict):
        raise ConfigError(f"hqq config: quant_config.weight_quant_params must be a dict, got {weight!r}")
    bad = set(weight) - set(WEIGHT_PARAMS)
    if bad:
        raise ConfigError(f"hqq config: unknown key(s) {sorted(bad)} in quant_config.weight_quant_params; valid: {list(WEIGHT_PARAMS)}")
    for key, value in [*weight.items(), *((k, quant_config[k]) for k in QUANT_CONFIG_KEYS[1:] if k in quant_config)]:
        if key in data and data[key] != value:
            raise ConfigError(f"hqq config: {key!r} is given twice with different values ({data[key]!r}, {value!r})")
        data[key] = value
    return data

