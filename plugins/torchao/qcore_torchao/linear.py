"""The module that replaces nn.Linear: an nn.Linear whose weight is a torchao tensor subclass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import int4_plain, kernels


class TorchAoLinear(nn.Linear):
    """nn.Linear holding a torchao weight (``Int8Tensor``, ``Float8Tensor``, ``IntxUnpackedToInt8Tensor``...).

    It is what ``quantize_`` makes of an nn.Linear (the weight parameter becomes the tensor
    subclass, torchao dispatches ``F.linear``), plus a CPU decode path: for at most
    ``kernels.DECODE_ROWS`` rows of input on the CPU, the weights torchao stores are multiplied with
    this package's compiled kernels (:mod:`qcore_torchao.kernels`) where those are faster.
    Set ``fast_cpu = False`` on a module (or the class) to always run torchao's path. ``Int4Tensor``
    weights (``Int4WeightOnlyConfig``) always run on qcore's kernels on the CPU: torchao has none there.
    """

    fast_cpu = True

    def __init__(self, in_features: int, out_features: int, bias: bool, device: Any = None, dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight.requires_grad_(False)
        self._cpu_kernel: Any = None

    def set_weight(self, weight: torch.Tensor) -> None:
        """Install a torchao weight (of shape (out_features, in_features)) and drop any kernel built for the old one."""
        self.weight = nn.Parameter(weight, requires_grad=False)
        self._cpu_kernel = None

    def _kernel(self) -> Any:
        """The CPU decode kernel for the current weight (built once per weight), or None."""
        weight = self._parameters["weight"]  # (what self.weight returns, without nn.Module's __getattr__: per token)
        inner = getattr(weight, "qdata", None)
        if inner is None:
            return None
        cached = self._cpu_kernel
        if cached is None or cached[0] is not inner:
            cached = self._cpu_kernel = (inner, kernels.cpu_kernel_for(weight))
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cpu and type(self._parameters["weight"]).__name__ == "Int4Tensor":
            return self._int4_cpu(x)  # torchao has no CPU kernel for Int4Tensor (its linear is mslk's CUDA op)
        if self.fast_cpu and x.is_cpu and not (torch.is_grad_enabled() and x.requires_grad):
            kernel = self._kernel()
            if kernel is not None and x.numel() // x.shape[-1] <= kernels.DECODE_ROWS:
                y = kernel.matmul(x)
                if y is not None:  # (None: not for this dtype of x)
                    return y if self.bias is None else y + self.bias
        return nn.functional.linear(x, self.weight, self.bias)

    def _int4_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """An ``Int4Tensor`` weight on the CPU: qcore's affine int4 kernel where it takes the rows, else W
        dequantized (float32, then x's dtype) and ``F.linear``."""
        kernel = self._kernel()
        rows = x.numel() // x.shape[-1]
        if kernel is not None and rows <= kernel.max_rows and not (torch.is_grad_enabled() and x.requires_grad):
            y = kernel.matmul(x)
        else:
            w = kernel.dequantize(x.dtype) if kernel is not None else int4_plain.dequantize(self.weight, x.dtype)
            y = nn.functional.linear(x, w)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight={type(self.weight).__name__}"
