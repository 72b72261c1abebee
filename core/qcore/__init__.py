"""qcore: load, quantize, save and run quantized PyTorch models. Backends are plugins.

    import qcore
    model = qcore.load_quantized("ckpt-dir")
    model = qcore.load_quantized("float-ckpt", quantization_config=qcore.config("bitsandbytes", load_in_4bit=True))
    qcore.save_quantized(model, "out-dir")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qcore.config import QuantizationConfig
from qcore.hookspecs import hookimpl
from qcore.plugins import make_config as config
from qcore.plugins import registry

__version__ = "0.1.0"

__all__ = [
    "QuantizationConfig",
    "config",
    "dequantize",
    "hookimpl",
    "is_trainable",
    "load_quantized",
    "quantize",
    "registry",
    "save_quantized",
]


def __getattr__(name: str) -> Any:
    """The heavy entry points import torch; they load on first use, with their real signatures and docs."""
    homes = {
        "load_quantized": "qcore.loading",
        "save_quantized": "qcore.saving",
        "quantize": "qcore.quantization",
        "dequantize": "qcore.quantization",
        "is_trainable": "qcore.quantization",
    }
    if name in homes:
        import importlib

        value = getattr(importlib.import_module(homes[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qcore' has no attribute {name!r}")


if TYPE_CHECKING:  # for IDEs and type checkers: the real functions
    from qcore.loading import load_quantized
    from qcore.quantization import dequantize, is_trainable, quantize
    from qcore.saving import save_quantized
