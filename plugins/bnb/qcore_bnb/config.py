"""BitsAndBytesConfig-compatible config (``quant_method: "bitsandbytes"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qcore.config import QuantizationConfig, parse_dtype
from qcore.errors import ConfigError

if TYPE_CHECKING:
    import torch

STORAGE_DTYPES = ("uint8", "int8", "float16", "bfloat16", "float32")


@dataclass
class BnbConfig(QuantizationConfig):
    """Hugging Face's ``BitsAndBytesConfig`` keys, with the same names and defaults."""

    quant_method = "bitsandbytes"
    known_foreign_keys = frozenset({"_load_in_4bit", "_load_in_8bit"})

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: Any = None
    bnb_4bit_quant_type: str = "fp4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: Any = "uint8"

    def validate(self) -> None:
        super().validate()
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("load_in_4bit and load_in_8bit are both set; choose one")
        if not (self.load_in_4bit or self.load_in_8bit):
            raise ConfigError("set load_in_4bit=True (NF4/FP4) or load_in_8bit=True (LLM.int8)")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"bnb_4bit_quant_type must be 'nf4' or 'fp4', got {self.bnb_4bit_quant_type!r}")
        import torch

        # transformers writes the default compute dtype as "float32"; hold it explicitly so configs round-trip
        self.bnb_4bit_compute_dtype = parse_dtype(self.bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype") or torch.float32
        storage = parse_dtype(self.bnb_4bit_quant_storage, "bnb_4bit_quant_storage")
        if str(storage).removeprefix("torch.") not in STORAGE_DTYPES:
            raise ConfigError(f"bnb_4bit_quant_storage must be one of {STORAGE_DTYPES}, got {self.bnb_4bit_quant_storage!r}")
        self.bnb_4bit_quant_storage = str(storage).removeprefix("torch.")
        if self.llm_int8_threshold < 0:
            raise ConfigError(f"llm_int8_threshold must be >= 0, got {self.llm_int8_threshold}")
        if self.llm_int8_has_fp16_weight:
            raise ConfigError(
                "llm_int8_has_fp16_weight=True (8-bit training on float master weights) is not supported; "
                "train LoRA adapters on a 4-bit model instead (load_in_4bit=True)"
            )
        if self.llm_int8_skip_modules is not None and self.modules_to_not_convert is None:
            # transformers: the skip list replaces the default (lm_head) skip
            self.modules_to_not_convert = list(self.llm_int8_skip_modules)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.bnb_4bit_compute_dtype

    @property
    def storage_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.bnb_4bit_quant_storage)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["_load_in_4bit"], data["_load_in_8bit"] = self.load_in_4bit, self.load_in_8bit
        return data
