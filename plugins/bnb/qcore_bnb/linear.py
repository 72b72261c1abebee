"""The modules that replace nn.Linear: 4-bit (NF4/FP4) and LLM.int8.

Stored tensors are never modified after loading (bitsandbytes' CPU path rewrites absmax
in place on the first forward; here a forward only reads), so saving after inference
writes the same checkpoint as saving before it.
"""

from __future__ import annotations

import torch
from torch import nn

from qcore import lut4, native

from . import kernels, ops
from .format import QuantState4bit


def triton_kernels():
    """The Triton GPU kernels, or None where Triton is not installed (CUDA then uses plain torch)."""
    return native.optional_module("qcore_bnb.triton_kernels")


class Linear4bit(nn.Module):
    """y = x @ dequantize(W).T + b, W in 4-bit blocks; gradients flow to x (QLoRA).

    On CPU, for layouts the lookup kernels take (blocks of a multiple of 16 tiling whole rows, i.e.
    every bitsandbytes checkpoint of a linear layer): up to ``gemv_max_rows`` rows of x (decoding),
    ``torch.ops.qcore_bnb.lut4_gemm``, a GEMV that never materializes W and accumulates in float32;
    more rows (prefill), or when x needs gradients, ``lut4_dequantize`` into ``compute_dtype`` and a
    torch matmul. Both run this package's compiled kernels, or torch without them (see :mod:`.ops`).
    On CUDA with Triton installed, a fused Triton kernel that decodes W tile by tile in registers
    (dequantize + matmul in torch without Triton).

    The code (``quant_map``), the float32 absmax and the byte-pair table are buffers (not saved:
    the checkpoint tensors come from :meth:`checkpoint_tensors`), and ``_apply`` moves the quant
    state's own tensors too, so ``.to()``, ``.cuda()`` and accelerate's dispatch move everything.
    """

    gemv_max_rows = 8  # measured crossover on an AVX-512 CPU: 8 rows still 1.1-1.4x faster, 16 rows slower

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype, device: str = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, compute_dtype
        n = in_features * out_features
        self.register_buffer("weight", torch.empty((n + 1) // 2, 1, dtype=torch.uint8, device=device))
        self.register_buffer("absmax", torch.empty(-(-n // 64), dtype=torch.float32, device=device))
        self.register_buffer("code", torch.zeros(16, dtype=torch.float32, device=device), persistent=False)
        self.register_buffer("table", torch.zeros(256, 2, dtype=torch.float32, device=device), persistent=False)
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self.register_buffer("code_i8", torch.zeros(16, dtype=torch.int8, device=device), persistent=False)
        self.code_scale_inv = 1.0
        self.state: QuantState4bit | None = None
        self.lookup = self.lookup_q8 = False
        # decode with x quantized to int8 per 64 values (lut4_gemm_q8): faster, approximate; see qcore.lut4
        self.int8_activations = lut4.int8_activations_default()

    def set_state(self, packed: torch.Tensor, state: QuantState4bit) -> None:
        self.weight, self.state = packed, state
        self.absmax = self._float_absmax().contiguous()
        self.code = state.quant_map.float().contiguous()
        self.table = kernels.byte_pair_table(self.code)
        code_i8, self.code_scale_inv = lut4.int8_code(self.code)
        self.code_i8 = code_i8.to(self.code.device)
        n, k = state.shape if len(state.shape) == 2 else (0, 0)
        self.lookup = lut4.supported(state.blocksize, n, k)
        self.lookup_q8 = lut4.supported_q8(state.blocksize, n, k)

    @property
    def native(self) -> bool:
        """Whether the CPU forward runs the compiled kernels (False: their torch fallback or plain torch)."""
        return self.lookup and ops.library() is not None

    def _apply(self, fn, recurse=True):
        """Move the quant state's tensors with the module's (``.to()``, ``.cuda()``, accelerate).

        Only the device follows: a dtype cast (``model.half()``) leaves the quantization statistics in
        float32 (and the packed bytes as they are), as the kernels and the checkpoint format need them."""
        kept = {name: getattr(self, name) for name in ("absmax", "code", "table", "code_i8")}
        super()._apply(fn, recurse)
        device = fn(torch.empty(0)).device

        def move(t: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(t, device=device) if t.is_meta else t.to(device)

        for name, t in kept.items():
            setattr(self, name, move(t))
        s = self.state
        if s is not None:
            s.absmax, s.quant_map = move(s.absmax), move(s.quant_map)
            if s.nested:
                s.nested_absmax, s.nested_quant_map = move(s.nested_absmax), move(s.nested_quant_map)
        return self

    def _float_absmax(self) -> torch.Tensor:
        """Per-block float32 absmax, decoding the nested (double-quantized) statistics if any."""
        s = self.state
        if not s.nested:
            return s.absmax.float()
        decoded = kernels.dequantize_blockwise_8bit(s.absmax, s.nested_absmax, s.nested_quant_map, s.nested_blocksize)
        return decoded + torch.tensor(s.nested_offset, dtype=torch.float32, device=decoded.device)

    def _packed_bytes(self) -> torch.Tensor:
        """The packed weight as contiguous uint8 (n*k/2,), whatever storage dtype the checkpoint used."""
        return self.weight.contiguous().view(-1).view(torch.uint8)

    def _lut4_dequantize(self, dtype: torch.dtype, reuse: bool) -> torch.Tensor:
        n, k = self.state.shape
        out_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        out = lut4.scratch(n * k, out_dtype).view(n, k) if reuse and out_dtype == dtype else torch.empty(n, k, dtype=out_dtype)
        ops.lut4_dequantize(self._packed_bytes(), self.absmax, self.code, n, k, self.state.blocksize, out)
        return out.to(dtype)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        s = self.state
        if self.weight.is_cuda and triton_kernels() is not None and len(s.shape) == 2:
            return triton_kernels().dequantize(self.weight, self.absmax, s.blocksize, s.shape, self.code,
                                               dtype or self.compute_dtype)
        if self.lookup and self.weight.device.type == "cpu":
            return self._lut4_dequantize(dtype or self.compute_dtype, reuse=False)
        return kernels.dequantize_4bit(self.weight, self.absmax, s.blocksize, s.shape, self.code,
                                       dtype or self.compute_dtype, table=self.table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, out_dtype = self.state, x.dtype
        rows = x.numel() // self.in_features
        x2 = x.reshape(rows, self.in_features)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        inference = not (torch.is_grad_enabled() and x.requires_grad)
        if inference and self.lookup and x.device.type == "cpu" and self.weight.device.type == "cpu":
            n, k = s.shape
            if self.int8_activations and self.lookup_q8 and rows <= lut4.Q8_MAX_ROWS:
                gemm = torch.ops.qcore_bnb.lut4_gemm_q8 if torch.compiler.is_compiling() else ops.lut4_gemm_q8
                y = gemm(x2.float().contiguous(), self._packed_bytes(), self.absmax, self.code_i8, self.code_scale_inv,
                         n, k, s.blocksize)
                y = y if bias is None else y + bias.float()
            elif rows <= self.gemv_max_rows:
                gemm = torch.ops.qcore_bnb.lut4_gemm if torch.compiler.is_compiling() else ops.lut4_gemm
                y = gemm(x2.float().contiguous(), self._packed_bytes(), self.absmax, self.code, n, k, s.blocksize)
                y = y if bias is None else y + bias.float()
            else:  # the weight lives in a reused buffer for this one product
                w = self._lut4_dequantize(self.compute_dtype, reuse=True)
                y = nn.functional.linear(x2.to(self.compute_dtype), w, bias)
        elif inference and x.is_cuda and triton_kernels() is not None and len(s.shape) == 2:
            y = triton_kernels().matmul(x2.to(self.compute_dtype), self.weight, self.absmax, s.blocksize, s.shape, self.code)
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
