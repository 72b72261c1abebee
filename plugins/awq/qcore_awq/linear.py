"""AWQLinear: one AWQ layer, its codes resident in a single layout, multiplied by the best kernel at hand."""

from __future__ import annotations

import torch
from torch import nn

from qcore import int4, native

from . import kernels
from .format import AWQTensors, from_tensors, pack_awq_order, to_tensors, unpack_awq_order


def triton_kernels():
    """qcore_awq.triton_kernels, or None when Triton is not installed."""
    return native.optional_module("qcore_awq.triton_kernels")


class AWQLinear(nn.Module):
    """Buffers named as in AutoAWQ GEMM checkpoints: qweight, qzeros, scales (and bias).

    After :meth:`prepare_fast_path` on CPU, the codes live only in the int4 kernel's layout
    (``qweight`` becomes None); :meth:`tensors` rebuilds the checkpoint tensors from it exactly.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int,
                 device: str | torch.device = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.empty(in_features, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.empty(groups, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=torch.float16, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self.bias_dtype: torch.dtype | None = None  # the bias's dtype in the checkpoint (AutoAWQ: float16)
        self.fast: int4.Int4LutWeight | int4.Int4PackWeight | None = None

    def set_layer(self, layer: AWQTensors, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        """Hold ``layer``; the bias is kept in the compute ``dtype`` and saved back in its own dtype."""
        packed = to_tensors(layer, "gemm")
        self.qweight, self.qzeros, self.scales = packed["qweight"], packed["qzeros"], packed["scales"]
        if self.bias is not None:
            self.bias_dtype = bias.dtype
            self.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
        self.fast = None

    def layer(self) -> AWQTensors:
        """Codes (in, out), zeros (G, out) and scales (G, out), from whichever layout is resident."""
        codes = self.fast.codes().T if self.fast is not None else unpack_awq_order(self.qweight)
        return AWQTensors(codes, unpack_awq_order(self.qzeros), self.scales)

    def tensors(self, layout: str) -> dict[str, torch.Tensor]:
        """The checkpoint tensors of this layer in ``layout`` ("gemm" or "gemv")."""
        if layout == "gemm" and self.fast is None:
            out = {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales}
        else:
            out = to_tensors(self.layer(), layout)
        if self.bias is not None:
            out["bias"] = self.bias.data.to(self.bias_dtype or self.bias.dtype)
        return out

    def load(self, module_name: str, tensors: dict[str, torch.Tensor], layout: str, dtype: torch.dtype) -> None:
        layer = from_tensors(module_name, tensors, layout, self.in_features, self.out_features, self.group_size)
        self.set_layer(layer, tensors.get("bias"), dtype)

    def prepare_fast_path(self) -> None:
        """Repack for the CPU int4 kernels (:func:`kernels.fast_weight`) where the shapes allow it, dropping the
        GEMM ``qweight`` (one resident layout)."""
        if self.fast is not None or self.qweight is None or self.qweight.device.type != "cpu":
            return
        layer = self.layer()
        self.fast = kernels.fast_weight(layer.codes, layer.zeros, layer.scales)
        if self.fast is not None:
            self.qweight = None

    def drop_fast_path(self) -> None:
        """Go back to the GEMM ``qweight`` and the reference kernel (for debugging and exact comparisons)."""
        if self.fast is not None:
            self.qweight = pack_awq_order(self.fast.codes().T).to(self.scales.device)
            self.fast = None

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        """``.to()`` / accelerate: the fast layout is CPU-only, so moving the layer elsewhere first restores the
        GEMM ``qweight`` (what the reference reads); a move that stays on the CPU moves the layout's tensors
        (their dtypes never change)."""
        if self.fast is not None:
            if fn(torch.empty(0)).device.type != "cpu":
                self.drop_fast_path()
            else:
                for name, t in self.fast.tensors().items():
                    setattr(self.fast, name, fn(t).to(t.dtype))
        return super()._apply(fn, recurse)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        layer = self.layer()
        return kernels.dequantize(layer.codes, layer.zeros, layer.scales, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if (self.fast is not None and x.device.type == "cpu" and rows <= self.fast.max_rows
                and not (torch.is_grad_enabled() and x.requires_grad)):
            y = self.fast.matmul(x)
        elif (x.is_cuda and self.qweight is not None and triton_kernels() is not None
              and not (torch.is_grad_enabled() and x.requires_grad)):
            y = triton_kernels().matmul(x.reshape(rows, self.in_features), self.qweight, self.qzeros, self.scales,
                                        self.group_size).reshape(*x.shape[:-1], self.out_features)
        else:
            y = nn.functional.linear(x, self.dequantized_weight(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        kernel = type(self.fast).__name__ if self.fast is not None else "reference"
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, kernel={kernel}"
