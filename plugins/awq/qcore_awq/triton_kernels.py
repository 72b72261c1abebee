"""Triton GPU kernel for AWQ layers (imported only when a CUDA tensor needs it).

``y = x @ W`` with ``W[k, n] = scales[k // G, n] * (q[k, n] - z[k // G, n])`` decoded per
``(BLOCK_K, BLOCK_N)`` tile in registers straight from AutoAWQ's GEMM tensors: ``qweight`` int32
``[in, out / 8]`` and ``qzeros`` int32 ``[in / G, out / 8]``, eight codes per word along the outputs in
AWQ's order (word position ``p`` holds column ``8j + [0, 2, 4, 6, 1, 3, 5, 7][p]``, so column ``c``
sits at bits ``4 * (c % 8 // 2 + 4 * (c % 2))``), ``scales`` float16 ``[in / G, out]``.
Tested on CPU with Triton's interpreter (``TRITON_INTERPRET=1``) when no GPU is present.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _matmul_kernel(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, y_ptr, M, N, K, G,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    words = N // 8
    shift = ((rn % 8) // 2 + (rn % 2) * 4) * 4  # AWQ's nibble order within a word
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < K
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & kmask[None, :], other=0.0)
        wmask = kmask[:, None] & (rn[None, :] < N)
        word = tl.load(qweight_ptr + rk[:, None] * words + rn[None, :] // 8, mask=wmask, other=0)
        q = (word >> shift[None, :]) & 15
        g = rk // G
        zword = tl.load(qzeros_ptr + g[:, None] * words + rn[None, :] // 8, mask=wmask, other=0)
        z = (zword >> shift[None, :]) & 15
        s = tl.load(scales_ptr + g[:, None] * N + rn[None, :], mask=wmask, other=0.0).to(tl.float32)
        w = (s * (q - z).to(tl.float32)).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
           group_size: int) -> torch.Tensor:
    """``x (m, in) @ W (in, out)`` in x's dtype, float32 accumulation, from the GEMM tensors as loaded."""
    x = x.contiguous()
    m, k = x.shape
    n = scales.shape[1]
    if qweight.shape != (k, n // 8) or qzeros.shape != (k // group_size, n // 8) or scales.shape != (k // group_size, n):
        raise ValueError(f"AWQ GEMM tensors {list(qweight.shape)}, {list(qzeros.shape)}, {list(scales.shape)} do not "
                         f"fit x {list(x.shape)} in groups of {group_size}")
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    _matmul_kernel[grid](x, qweight.contiguous(), qzeros.contiguous(), scales.contiguous(), y, m, n, k, group_size,
                         BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=32, IEEE=x.dtype == torch.float32)
    return y
