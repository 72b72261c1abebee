"""The modules that replace nn.Linear: 4-bit (NF4/FP4) and LLM.int8.

Stored tensors are never modified after loading (bitsandbytes' CPU path rewrites absmax
in place on the first forward; here a forward only reads), so saving after inference
writes the same checkpoint as saving before it.
"""

from __future__ import annotations

import torch
from torch import nn

from qcore import lut4, native

from . import kernels
from .format import QuantState4bit


def triton_kernels():
    """The Triton GPU kernels, or None where Triton is not installed (CUDA then uses plain torch)."""
    return native.optional_module("qcore_bnb.triton_kernels")


class Linear4bit(nn.Module):
    """y = x @ dequantize(W).T + b, W in 4-bit blocks; gradients flow to x (QLoRA).

    Kernels on CPU, when qcore's ``lut4`` C kernels build here: up to ``gemv_max_rows`` rows of x (decoding),
    a fused GEMV that never materializes W, accumulating in float32; more rows (prefill), or
    when x needs gradients, W is dequantized in C to ``compute_dtype`` and multiplied by torch.
    Without a C compiler, the same in plain torch. On CUDA with Triton installed, a fused Triton
    kernel that decodes W tile by tile in registers (dequantize + matmul in torch without Triton).
    """

    gemv_max_rows = 8  # measured crossover on an AVX-512 CPU: 8 rows still 1.1-1.4x faster, 16 rows slower

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype, device: str = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, compute_dtype
        n = in_features * out_features
        self.register_buffer("weight", torch.empty((n + 1) // 2, 1, dtype=torch.uint8, device=device))
        self.register_buffer("absmax", torch.empty(-(-n // 64), dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self.state: QuantState4bit | None = None
        self.table: torch.Tensor | None = None
        self.native = False

    def set_state(self, packed: torch.Tensor, state: QuantState4bit) -> None:
        self.weight, self.state = packed, state
        self.absmax = self._float_absmax()
        self.table = kernels.byte_pair_table(state.quant_map)
        self.native = lut4.supported(packed, state.blocksize, state.shape)

    def _float_absmax(self) -> torch.Tensor:
        """Per-block float32 absmax, decoding the nested (double-quantized) statistics if any."""
        s = self.state
        if not s.nested:
            return s.absmax.float()
        decoded = kernels.dequantize_blockwise_8bit(s.absmax, s.nested_absmax, s.nested_quant_map, s.nested_blocksize)
        return decoded + torch.tensor(s.nested_offset, dtype=torch.float32)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        s = self.state
        if self.weight.is_cuda and triton_kernels() is not None and len(s.shape) == 2:
            return triton_kernels().dequantize(self.weight, self.absmax, s.blocksize, s.shape, s.quant_map,
                                               dtype or self.compute_dtype)
        if self.native and self.weight.device.type == "cpu":
            return lut4.dequantize(self.weight, self.absmax, s.blocksize, s.shape, s.quant_map, dtype or self.compute_dtype)
        return kernels.dequantize_4bit(self.weight, self.absmax, s.blocksize, s.shape, s.quant_map,
                                       dtype or self.compute_dtype, table=self.table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, out_dtype = self.state, x.dtype
        rows = x.numel() // self.in_features
        x2 = x.reshape(rows, self.in_features)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        inference = not (torch.is_grad_enabled() and x.requires_grad)
        if inference and self.native and x.device.type == "cpu" and self.weight.device.type == "cpu":
            if rows <= self.gemv_max_rows:
                y = lut4.matmul(x2, self.weight, self.absmax, s.blocksize, s.shape, s.quant_map)
                y = y if bias is None else y + bias.float()
            else:  # the weight lives in a reused buffer for this one product
                w = lut4.dequantize(self.weight, self.absmax, s.blocksize, s.shape, s.quant_map, self.compute_dtype, reuse=True)
                y = nn.functional.linear(x2.to(self.compute_dtype), w, bias)
        elif inference and x.is_cuda and triton_kernels() is not None and len(s.shape) == 2:
            y = triton_kernels().matmul(x2.to(self.compute_dtype), self.weight, self.absmax, s.blocksize, s.shape, s.quant_map)
            y = y if bias is None else y + bias
        else:
            y = nn.functional.linear(x2.to(self.compute_dtype), self.dequantized_weight(), bias)
        return y.to(out_dtype).reshape(*x.shape[:-1], self.out_features)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight, **self.state.tensors()}
        if self.bias is not None:
            out["bias"] = self.bias.data
        return out

    def extra_repr(self) -> str:
        kind = self.state.quant_type if self.state else "?"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}, compute={self.compute_dtype}"


class Linear8bitLt(nn.Module):
    """LLM.int8: int8 row-wise weights, int8 activations, outlier input columns in float."""

    def __init__(self, in_features: int, out_features: int, bias: bool, threshold: float, device: str = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features, self.threshold = in_features, out_features, threshold
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("SCB", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.int8_dequantize(self.weight, self.SCB, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # training adapters: dequantize, let autograd see x
            return nn.functional.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return kernels.int8_mixed_matmul(x, self.weight, self.SCB, self.threshold, self.bias)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight, "SCB": self.SCB, "weight_format": torch.tensor(0, dtype=torch.uint8)}
        if self.bias is not None:
            out["bias"] = self.bias.data
        return out
