"""TorchAoConfig-compatible config (``quant_method: "torchao"``), as transformers writes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qcore.config import QuantizationConfig
from qcore.errors import ConfigError

from . import aoconfig


@dataclass
class TorchAoConfig(QuantizationConfig):
    """The keys of transformers' ``TorchAoConfig.to_dict()``.

    ``quant_type`` is stored as transformers writes it: ``{"default": config_to_dict(AOBaseConfig)}``.
    It may be given as a torchao config class name (``"Int8WeightOnlyConfig"``: its defaults), a
    torchao config instance, the serialized ``{"_type", "_version", "_data"}`` dict, or the
    ``{"default": ...}`` wrapper; it is normalized to the wrapper on construction (so ``to_dict()``
    is exactly what transformers writes and reads).
    """

    quant_method = "torchao"

    quant_type: Any = None
    include_input_output_embeddings: bool = False
    untie_embedding_weights: bool = False

    def validate(self) -> None:
        super().validate()
        if self.quant_type is None:
            raise ConfigError(
                "the torchao method needs quant_type, a torchao config, e.g. quant_type='Int8WeightOnlyConfig'; "
                f"configs that work on this device: {', '.join(aoconfig.configs_for_this_device())}"
            )
        inner = self.quant_type
        if isinstance(inner, dict) and "_type" not in inner:
            if set(inner) != {"default"}:
                raise ConfigError(
                    f"quant_type holds keys {sorted(inner)}; transformers writes exactly one key, 'default' "
                    "(per-module torchao configs are given with module_overrides in qcore)"
                )
            inner = inner["default"]
        self.quant_type = {"default": aoconfig.serialized(inner)}
        for flag in ("include_input_output_embeddings", "untie_embedding_weights"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.include_input_output_embeddings:
            raise ConfigError(
                "include_input_output_embeddings=True (quantizing nn.Embedding and a tied lm_head) is not supported "
                "by qcore-plugin-torchao yet; only nn.Linear modules are quantized. Leave it false"
            )

    @property
    def type_name(self) -> str:
        """The torchao config class name, e.g. ``"Int8WeightOnlyConfig"``."""
        return self.quant_type["default"]["_type"]

    def ao_config(self) -> Any:
        """The torchao ``AOBaseConfig`` instance (built once by torchao's ``config_from_dict``)."""
        cached = self.__dict__.get("_ao_config")
        if cached is None or cached[0] != self.quant_type:
            cached = (self.quant_type, aoconfig.instantiate(self.quant_type["default"]))
            self.__dict__["_ao_config"] = cached
        return cached[1]
