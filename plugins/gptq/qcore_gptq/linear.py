"""GPTQQuantLinear: holds a layer in the GPTQ format and multiplies with the best kernel at hand."""

from __future__ import annotations

import torch
from torch import nn

from qcore import native

from . import kernels


def triton_kernels():
    """The Triton GPU kernel, or None where Triton is not installed (CUDA then uses the reference)."""
    return native.optional_module("qcore_gptq.triton_kernels")


class GPTQQuantLinear(nn.Module):
    """Buffers named as in GPTQ checkpoints: qweight, qzeros (as unpacked ``zeros``), scales, g_idx."""

    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int, group_size: int, device: str = "meta") -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = in_features if group_size == -1 else group_size
        groups = -(-in_features // self.group_size)
        # a buffer under a property of the same name (register_buffer refuses that): see :attr:`qweight`
        self._buffers["qweight"] = torch.empty(in_features * bits // 32, out_features, dtype=torch.int32, device=device)
        self.register_buffer("zeros", torch.empty(groups, out_features, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=torch.float16, device=device))
        self.register_buffer("g_idx", torch.empty(in_features, dtype=torch.int64, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self.fast = None

    @property
    def fast(self):
        """The fast CPU layout (Int4LutWeight, Int4CpuWeight, Int8CpuWeight) or None (the reference kernel)."""
        return self.__dict__.get("_fast")

    @fast.setter
    def fast(self, value) -> None:
        current = self.__dict__.get("_fast")
        if current is not None and value is not current and self._buffers.get("qweight") is None:
            self._buffers["qweight"] = current.qweight()  # dropping the only resident copy: rebuild qweight first
        self.__dict__["_fast"] = value

    @property
    def qweight(self) -> torch.Tensor:
        """The checkpoint's int32 qweight: the buffer, or rebuilt from the fast kernel's layout once that
        holds the only resident copy of the weight (saving calls this; it allocates a new tensor)."""
        buffer = self._buffers.get("qweight")
        if buffer is None and self.fast is not None:
            return self.fast.qweight()
        return buffer

    def set_tensors(self, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    bias: torch.Tensor | None) -> None:
        self._buffers["qweight"] = qweight
        self.zeros, self.scales, self.g_idx = zeros.to(torch.int32), scales.to(torch.float16), g_idx
        if self.bias is not None:
            self.bias = nn.Parameter(bias, requires_grad=False)
        self.fast = None

    def prepare_fast_path(self) -> None:
        """Repack for a fast CPU kernel when the layout allows it (else keep the reference): 4-bit on
        this package's compiled lookup GEMV, or torch's int4 GEMM without the binary; 8-bit on the int8
        GEMV. The repacked weight then replaces ``qweight`` (one resident copy; :attr:`qweight` rebuilds it)."""
        qweight = self.qweight
        if qweight is None or qweight.device.type != "cpu":
            return
        int4 = None
        if kernels.int4_lut_supported(self.bits, self.group_size, qweight):
            int4 = kernels.Int4LutWeight
        elif kernels.int4_cpu_supported(self.bits, self.group_size, self.in_features):
            int4 = kernels.Int4CpuWeight
        fast = None
        if int4 is not None:
            try:
                fast = int4(qweight, self.zeros, self.scales, self.g_idx, self.in_features, self.group_size)
            except ValueError:
                fast = None
        elif kernels.int8_cpu_supported(self.bits, self.zeros):
            fast = kernels.Int8CpuWeight(qweight, self.scales, self.in_features)
        self.fast = fast
        if fast is not None and not getattr(fast, "keeps_qweight", False):
            self._buffers["qweight"] = None

    def _apply(self, fn, recurse=True):
        """``.to()`` / ``.cuda()`` / accelerate: the fast layout is CPU-only, so moving the layer elsewhere
        first restores ``qweight`` (the layout the GPU kernels read) and drops the CPU layout; a move
        that stays on CPU moves the fast layout's tensors too (their dtypes never change)."""
        if self.fast is not None:
            probe = fn(torch.empty(0))
            if probe.device.type != "cpu":
                self._buffers["qweight"] = self.qweight
                self.fast = None
            else:
                for name, t in self.fast.tensors().items():
                    setattr(self.fast, name, fn(t).to(t.dtype))
        return super()._apply(fn, recurse)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.dequantize(self.qweight, self.zeros, self.scales, self.g_idx, self.bits, self.in_features, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if (self.fast is not None and rows <= self.fast.max_rows and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.bfloat16) and not x.requires_grad):
            y = self.fast.matmul(x)
        elif (x.is_cuda and self.bits in (2, 4, 8) and triton_kernels() is not None
              and not (torch.is_grad_enabled() and x.requires_grad)):
            y = triton_kernels().matmul(x.reshape(rows, self.in_features), self.qweight, self.zeros, self.scales,
                                        self.g_idx, self.bits).reshape(*x.shape[:-1], self.out_features)
        else:
            y = nn.functional.linear(x, self.dequantized_weight(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        kernel = type(self.fast).__name__ if self.fast is not None else "reference"
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, group_size={self.group_size}, kernel={kernel}"
