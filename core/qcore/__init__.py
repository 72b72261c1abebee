"""qcore: load, quantize, save and run quantized PyTorch models. Backends are plugins.

    import qcore
    model = qcore.load_quantized("ckpt-dir")
    model = qcore.load_quantized("float-ckpt", quantization_config=qcore.config("bitsandbytes", load_in_4bit=True))
    qcore.save_quantized(model, "out-dir")
"""

from __future__ import annotations

from typing import Any

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


def load_quantized(*args: Any, **kwargs: Any) -> Any:
    from qcore.loading import load_quantized as _load

    return _load(*args, **kwargs)


def save_quantized(*args: Any, **kwargs: Any) -> Any:
    from qcore.saving import save_quantized as _save

    return _save(*args, **kwargs)


def quantize(*args: Any, **kwargs: Any) -> Any:
    from qcore.calibration import quantize as _quantize

    return _quantize(*args, **kwargs)


def dequantize(*args: Any, **kwargs: Any) -> Any:
    from qcore.loading import dequantize as _dequantize

    return _dequantize(*args, **kwargs)


def is_trainable(*args: Any, **kwargs: Any) -> Any:
    from qcore.loading import is_trainable as _is_trainable

    return _is_trainable(*args, **kwargs)


load_quantized.__doc__ = "See qcore.loading.load_quantized."
save_quantized.__doc__ = "See qcore.saving.save_quantized."
quantize.__doc__ = "See qcore.calibration.quantize."
dequantize.__doc__ = "See qcore.loading.dequantize."
is_trainable.__doc__ = "See qcore.loading.is_trainable."
