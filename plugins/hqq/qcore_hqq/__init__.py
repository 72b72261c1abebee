"""qcore-plugin-hqq: HQQ (half-quadratic quantization) for qcore, checkpoint-compatible with the hqq library."""

from qcore_hqq.config import HqqConfig

__all__ = ["HqqConfig"]
