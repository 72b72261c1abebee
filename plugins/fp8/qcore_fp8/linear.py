"""``Fp8Linear``: the module that replaces ``nn.Linear`` (FP8 weights in memory, 1 byte per weight)."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch
from torch import nn

from . import kernels, ops

GEMV_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # float64 keeps its own precision (dequantize path)


@functools.cache
def triton_kernels() -> ModuleType | None:
    """The Triton GPU kernels, or None where Triton is not installed (CUDA then uses the torch path)."""
    try:
        return importlib.import_module("qcore_fp8.triton_kernels")
    except ImportError:
        return None


class Fp8Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W = float32(weight) * weight_scale_inv`` per block, computed in x's dtype.

    Tensors (named as transformers' ``FP8Linear`` and DeepSeek's checkpoints, see docs/methods/fp8.md):
    ``weight`` float8_e4m3fn ``(out, in)``; ``weight_scale_inv`` float32 (or the checkpoint's ``float8_e8m0fnu``)
    ``(ceil(out/bn), ceil(in/bk))``, a scalar per tensor; ``activation_scale`` (static scheme only,
    kept for saving); ``bias`` in the model's dtype. They are never modified after loading.

    Paths: inference on CPU with the plugin's binary runs up to 8 rows (decoding) through the FP8 GEMV
    (:func:`ops.gemv`: FP8 decoded inside the product in float32, no dequantized copy, the output rounded
    once to x's dtype) and more rows (prefill) dequantize with the C kernel into a per-thread scratch
    buffer reused by every layer, then one ``F.linear``; without the binary (and on CUDA without Triton)
    the torch path dequantizes into that buffer; on CUDA with Triton, a fused kernel decodes the FP8
    tiles in registers. With ``x.requires_grad`` (adapters on top) the weight is dequantized into a
    fresh tensor so autograd can keep it; the FP8 weight itself is frozen.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, block_size: tuple[int, int] | None,
                 scale_fmt: str = "float", activation_scheme: str = "dynamic", compute_dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.scale_fmt, self.activation_scheme = block_size, scale_fmt, activation_scheme
        self.compute_dtype = compute_dtype
        self.scale_name = "weight_scale_inv"  # the checkpoint's name for the scales (written back as read)
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=kernels.FP8_DTYPE, device=device))
        grid = kernels.scale_grid((out_features, in_features), block_size)
        # float32 also for ue8m0 (powers of two); a checkpoint's float8_e8m0fnu / uint8 scales are kept as read
        self.register_buffer("weight_scale_inv", torch.empty(grid, dtype=torch.float32, device=device))
        if activation_scheme == "static":
            self.register_buffer("activation_scale", torch.empty((), dtype=torch.float32, device=device))
        else:
            self.activation_scale = None
        self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device), requires_grad=False) if bias else None

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A fresh ``(out, in)`` tensor of ``dtype`` (default: the model's compute dtype)."""
        return kernels.dequantize_blockwise(self.weight, self.weight_scale_inv, self.block_size, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return nn.functional.linear(x, self.dequantized_weight(dtype), bias)
        if x.is_cuda and self.weight.is_cuda and triton_kernels() is not None:
            rows = x.numel() // self.in_features
            y = triton_kernels().matmul(x.reshape(rows, self.in_features), self.weight,
                                        kernels.scales_to_float32(self.weight_scale_inv), self.block_size)
            y = y if bias is None else y + bias
            return y.reshape(*x.shape[:-1], self.out_features)
        if x.device.type == "cpu" and self.weight.device.type == "cpu" and self.weight.is_contiguous() \
                and ops.library() is not None:
            return self._forward_native(x, bias)
        weight = kernels.dequantize_into_scratch(self.weight, self.weight_scale_inv, self.block_size, dtype)
        return nn.functional.linear(x, weight, bias)

    def _forward_native(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """CPU with the plugin's binary: up to ``ops.MAX_ROWS`` rows (decoding) through the FP8 GEMV (float32
        product, rounded once to x's dtype); more rows (prefill) dequantize into this thread's reused buffer
        with the C kernel (bit-identical to the torch path), then ``F.linear``."""
        rows = x.numel() // self.in_features
        block_n, block_k = self.block_size or (0, 0)
        scales = self.weight_scale_inv
        if scales.dtype != torch.float32 or not scales.is_contiguous():  # ue8m0 checkpoints: tiny, per call
            scales = kernels.scales_to_float32(scales).contiguous()
        if self.block_size is None and scales.dim():
            scales = scales.reshape(())
        compiling = torch.compiler.is_compiling()  # under torch.compile, through the dispatcher (the fake impls)
        if 0 < rows <= ops.MAX_ROWS and x.dtype in GEMV_DTYPES:
            x32 = x.reshape(rows, self.in_features)
            if x32.dtype != torch.float32 or not x32.is_contiguous():
                x32 = x32.to(torch.float32).contiguous()
            gemv = torch.ops.qcore_fp8.gemv if compiling else ops.gemv
            y = gemv(x32, self.weight, scales, block_n, block_k)
            if bias is not None:
                y = y.add_(bias)
            return (y if x.dtype == torch.float32 else y.to(x.dtype)).view(*x.shape[:-1], self.out_features)
        out_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        weight = kernels.SCRATCH.get(tuple(self.weight.shape), out_dtype, self.weight.device)
        (torch.ops.qcore_fp8.dequantize if compiling else ops.dequantize)(self.weight, scales, block_n, block_k, weight)
        if x.dtype != out_dtype:  # float16: the float32 weight rounded once, into its own reused buffer
            weight = kernels.SCRATCH.get(tuple(self.weight.shape), x.dtype, self.weight.device).copy_(weight)
        return nn.functional.linear(x, weight, bias)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight, self.scale_name: self.weight_scale_inv}
        if self.activation_scale is not None:
            out["activation_scale"] = self.activation_scale
        if self.bias is not None:
            out["bias"] = self.bias.data
        return out

    def extra_repr(self) -> str:
        block = "per-tensor" if self.block_size is None else f"block={list(self.block_size)}"
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3fn, {block}, scales={self.scale_fmt}"
