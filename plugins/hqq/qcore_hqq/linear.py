"""HqqLinear: one Linear in HQQ's format, multiplied with the best kernel at hand."""

from __future__ import annotations

import torch
from torch import nn

from qcore import int4, native

from . import kernels
from .bitpack import pack
from .format import HqqMeta, layer_tensors


def triton_kernels():
    """qcore_hqq.triton_kernels, or None when Triton is not installed."""
    return native.optional_module("qcore_hqq.triton_kernels")


class HqqLinear(nn.Module):
    """A quantized Linear: ``W ≈ (W_q - zero) * scale`` per group (hqq's layout and meta).

    Buffers: ``scale``, ``zero`` (hqq's grouped shapes, in the stored dtype) and the codes in one
    resident layout: hqq's packed ``W_q``, or, for 4-bit and 8-bit axis-1 layers on the CPU, the kernel's
    (:func:`qcore_hqq.kernels.fast_weight`, held in ``fast``; ``W_q`` is then None). Saving converts
    back to hqq's tensors (:meth:`hqq_tensors`), bit for bit.

    ``HqqLinear.use_fast_kernels = False`` makes every forward run hqq's float32 arithmetic
    (dequantize + matmul) instead of the int4 kernel.
    """

    use_fast_kernels = True

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.meta: HqqMeta | None = None
        self.fast: int4.Int4LutWeight | int4.Int4PackWeight | kernels.Int8GroupWeight | None = None
        for name in ("W_q", "scale", "zero"):
            self.register_buffer(name, torch.empty(0, dtype=torch.uint8 if name == "W_q" else compute_dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device), requires_grad=False) if bias else None

    # --- filling ------------------------------------------------------------------------------
    def set_quantized(self, W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, meta: HqqMeta,
                      bias: torch.Tensor | None, device: torch.device) -> None:
        """Take hqq's packed ``W_q``, ``scale``, ``zero`` (grouped shapes) and place them on ``device``."""
        self.meta = meta
        self.scale, self.zero = scale.to(device), zero.to(device)
        if self.bias is not None and bias is not None:
            self.bias = nn.Parameter(bias.to(device=device, dtype=self.compute_dtype), requires_grad=False)
        self.fast = kernels.fast_weight(W_q, scale, zero, meta) if torch.device(device).type == "cpu" else None
        self.W_q = None if self.fast is not None else W_q.to(device)  # one resident layout: the kernel's

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # .to(device) and accelerate: the kernel's layout is CPU-only, so a move elsewhere first
        # restores hqq's W_q (which super() then moves) and drops it; a move that stays on the CPU
        # moves the layout's tensors (their dtypes never change)
        if self.fast is not None:
            if fn(torch.empty(0)).device.type != "cpu":
                self.W_q = self.hqq_packed_codes()
                self.fast = None
            else:
                for name, t in self.fast.tensors().items():
                    setattr(self.fast, name, fn(t).to(t.dtype))
        return super()._apply(fn, recurse)

    # --- views of the weight ------------------------------------------------------------------
    def hqq_packed_codes(self) -> torch.Tensor:
        """hqq's packed ``W_q`` (uint8, int32 for 3-bit), rebuilt from the resident layout when needed."""
        if self.fast is None:
            return self.W_q
        return pack(self.fast.codes().reshape(self.meta.code_shape()), self.meta.packing)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """float (out, in)."""
        if self.fast is not None:
            codes = self.fast.codes().float()  # exact, then hqq's own float32 arithmetic
            groups = (self.out_features, self.in_features // self.meta.group_size, self.meta.group_size)
            s = self.scale.float().reshape(groups[:2]).unsqueeze(-1)
            z = self.zero.float().reshape(groups[:2]).unsqueeze(-1)
            return ((codes.view(groups) - z) * s).reshape(self.out_features, self.in_features).to(dtype)
        return kernels.dequantize(self.W_q, self.scale, self.zero, self.meta, dtype)

    def hqq_tensors(self) -> dict[str, torch.Tensor]:
        """This layer's checkpoint tensors, named and encoded as hqq writes them."""
        return layer_tensors(self.hqq_packed_codes(), self.scale, self.zero, self.meta,
                             None if self.bias is None else self.bias.data)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.fast is not None and self.use_fast_kernels and x.is_cpu
                and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and x.numel() // x.shape[-1] <= self.fast.max_rows
                and not (torch.is_grad_enabled() and x.requires_grad)):
            y = self.fast.matmul(x)
        elif (x.is_cuda and self.W_q is not None and self.W_q.dtype == torch.uint8 and self.meta.channel_wise
              and self.meta.group_size and self.use_fast_kernels and triton_kernels() is not None
              and not (torch.is_grad_enabled() and x.requires_grad)):
            meta = self.meta
            y = triton_kernels().matmul(x.reshape(-1, self.in_features), self.W_q, self.scale, self.zero, meta.nbits,
                                        meta.group_size, meta.axis, meta.shape).reshape(*x.shape[:-1], self.out_features)
        else:
            y = nn.functional.linear(x, self.dequantized_weight(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        meta = self.meta
        kernel = type(self.fast).__name__ if self.fast is not None else "reference"
        if meta is None:
            return f"in_features={self.in_features}, out_features={self.out_features} (not loaded)"
        return (f"in_features={self.in_features}, out_features={self.out_features}, nbits={meta.nbits}, "
                f"group_size={meta.group_size}, axis={meta.axis}, kernel={kernel}")
