"""FineGrainedFP8Config-compatible config (``quant_method: "fp8"``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qcore.config import QuantizationConfig
from qcore.errors import ConfigError

ACTIVATION_SCHEMES = ("dynamic", "static")
SCALE_FORMATS = ("float", "ue8m0")
EXPERT_DTYPES = ("fp8", "fp4")


@dataclass
class Fp8Config(QuantizationConfig):
    """Hugging Face's ``FineGrainedFP8Config`` keys, with the same names and defaults.

    - ``weight_block_size``: ``[rows, cols]`` of one scale block (default ``[128, 128]``, DeepSeek-V3's),
      or None for one scale per tensor. Edge blocks of layers whose sizes are not multiples of the
      block are smaller (``ceil`` division, as DeepSeek and vLLM).
    - ``activation_scheme``: "dynamic" or "static" (static needs ``activation_scale`` tensors, so only
      pre-quantized checkpoints can use it).
    - ``scale_fmt``: "float" (float32 ``weight_scale_inv``) or "ue8m0" (powers of two stored as
      ``float8_e8m0fnu``, DeepSeek-V3.1/V4 style).
    - ``ignored_layers``: an alias of ``modules_to_not_convert`` (MiniMax's checkpoints use it).
    - ``dequantize``, ``modules_to_convert``, ``expert_dtype``: read and written back for
      compatibility; see ``validate`` and docs/methods/fp8.md for what qcore does with them.
    """

    quant_method = "fp8"

    activation_scheme: str = "dynamic"
    weight_block_size: list[int] | None = field(default_factory=lambda: [128, 128])
    dequantize: bool = False
    modules_to_convert: list[str] | None = None
    scale_fmt: str = "float"
    expert_dtype: str = "fp8"
    ignored_layers: list[str] | None = None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.activation_scheme, str) or self.activation_scheme.lower() not in ACTIVATION_SCHEMES:
            raise ConfigError(f"activation_scheme must be one of {ACTIVATION_SCHEMES}, got {self.activation_scheme!r}")
        self.activation_scheme = self.activation_scheme.lower()
        self.weight_block_size = _block_size(self.weight_block_size)
        if self.scale_fmt not in SCALE_FORMATS:
            raise ConfigError(f"scale_fmt must be one of {SCALE_FORMATS}, got {self.scale_fmt!r}")
        if self.expert_dtype not in EXPERT_DTYPES:
            raise ConfigError(f"expert_dtype must be one of {EXPERT_DTYPES}, got {self.expert_dtype!r}")
        if not isinstance(self.dequantize, bool):
            raise ConfigError(f"dequantize must be true or false, got {self.dequantize!r}")
        if self.scale_fmt == "ue8m0" and self.weight_block_size is None:
            raise ConfigError("scale_fmt='ue8m0' stores block scales; set weight_block_size (e.g. [128, 128])")
        for key in ("modules_to_convert", "ignored_layers", "modules_to_not_convert"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{key} must be a list of module names or patterns, got {value!r}")
        if self.ignored_layers is not None:
            self.ignored_layers = list(self.ignored_layers)
            if self.modules_to_not_convert is None:  # transformers: the alias fills the skip list when it is unset
                self.modules_to_not_convert = list(self.ignored_layers)

    @property
    def block_size(self) -> tuple[int, int] | None:
        return None if self.weight_block_size is None else (self.weight_block_size[0], self.weight_block_size[1])

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data.get("ignored_layers") is None:  # transformers never writes the alias
            data.pop("ignored_layers", None)
        return data


def _block_size(value: Any) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(
            f"weight_block_size must be two positive integers [rows, cols] (e.g. [128, 128]) or null for one "
            f"scale per tensor, got {value!r}"
        )
    return [int(value[0]), int(value[1])]
