"""HqqLinear: one Linear in HQQ's format, multiplied with the best kernel at hand."""

from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .bitpack import pack
from .format import HqqMeta, layer_tensors


class HqqLinear(nn.Module):
    """A quantized Linear: ``W ≈ (W_q - zero) * scale`` per group (hqq's layout and meta).

    Buffers: ``scale``, ``zero`` (hqq's grouped shapes, in the stored dtype) and the codes in one
    resident layout: hqq's packed ``W_q``, or, for 4-bit layers that fit torch's CPU int4 GEMM,
    ``W_int4`` + ``scales_and_offsets`` (:class:`qcore_hqq.kernels.Int4PackedWeight`). Saving
    converts back to hqq's tensors (:meth:`hqq_tensors`), bit for bit.

    ``HqqLinear.use_fast_kernels = False`` makes every forward run the exact float32 reference
    (dequantize + matmul) instead of the bfloat16 int4 GEMM.
    """

    use_fast_kernels = True

    def __init__(self, in_features: int, out_features: int, bias: bool, compute_dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.meta: HqqMeta | None = None
        self.fast: kernels.Int4PackedWeight | None = None
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
        self.fast = None
        if kernels.int4_fast_path_supported(meta, torch.device(device)):
            codes = kernels.codes_of(W_q, meta).reshape(meta.shape)
            groups = (meta.shape[0], meta.shape[1] // meta.group_size)
            self.fast = kernels.Int4PackedWeight(codes, scale.reshape(groups), zero.reshape(groups), meta.group_size)
            self.W_q = None  # one resident layout: the kernel's
            self.register_buffer("W_int4", self.fast.packed)
            self.register_buffer("scales_and_offsets", self.fast.scales_and_offsets)
        else:
            self.W_q = W_q.to(device)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # .to(device) and accelerate move the buffers; the kernel object must follow them, or
        # leave the CPU layout for hqq's (any other device runs the reference).
        moved = super()._apply(fn, recurse)
        if self.fast is not None:
            if self.W_int4.device.type == "cpu":
                self.fast.packed, self.fast.scales_and_offsets = self.W_int4, self.scales_and_offsets
            else:
                device = self.W_int4.device
                self.W_q = self.hqq_packed_codes().to(device)  # from the CPU copy the kernel object still holds
                del self.W_int4, self.scales_and_offsets
                self.fast = None
        return moved

    # --- views of the weight ------------------------------------------------------------------
    def hqq_packed_codes(self) -> torch.Tensor:
        """hqq's packed ``W_q`` (uint8, int32 for 3-bit), rebuilt from the resident layout when needed."""
        if self.fast is None:
            return self.W_q
        return pack(self.fast.codes().reshape(self.meta.code_shape()), self.meta.packing)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """float (out, in)."""
        if self.fast is not None:
            codes = self.fast.codes().float()
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
        if (self.fast is not None and self.use_fast_kernels and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and not (torch.is_grad_enabled() and x.requires_grad)):
            y = self.fast.matmul(x)
        else:
            y = nn.functional.linear(x, self.dequantized_weight(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        meta = self.meta
        kernel = "int4-cpu" if self.fast is not None else "reference"
        if meta is None:
            return f"in_features={self.in_features}, out_features={self.out_features} (not loaded)"
        return (f"in_features={self.in_features}, out_features={self.out_features}, nbits={meta.nbits}, "
                f"group_size={meta.group_size}, axis={meta.axis}, kernel={kernel}")
