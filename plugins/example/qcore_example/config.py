from dataclasses import dataclass

from qcore.config import QuantizationConfig
from qcore.errors import ConfigError


@dataclass
class ExampleInt8Config(QuantizationConfig):
    """Symmetric int8 weights with one float scale per output channel."""

    quant_method = "example_int8"

    bits: int = 8

    def validate(self) -> None:
        super().validate()
        if self.bits != 8:
            raise ConfigError(f"example_int8 supports bits=8 only, got {self.bits}")
