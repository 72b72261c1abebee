"""Triton GPU kernel for GPTQ layers (imported only when a CUDA tensor needs it).

``y = x @ W`` with ``W[k, n] = scales[g_idx[k], n] * (q[k, n] - zeros[g_idx[k], n])`` decoded per
``(BLOCK_K, BLOCK_N)`` tile in registers straight from ``qweight`` (int32, ``32 // bits`` codes
per word along the input dimension), so act-order (any ``g_idx``) and partial last groups need
nothing special. Bits 2, 4 and 8 (3-bit codes straddle words: those layers keep the reference).
Tested on CPU with Triton's interpreter (``TRITON_INTERPRET=1``) when no GPU is present.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BITS = (2, 4, 8)


@triton.jit
def _matmul_kernel(x_ptr, qweight_ptr, zeros_ptr, scales_ptr, g_idx_ptr, y_ptr, M, N, K,
                   BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   IEEE: tl.constexpr):
    per_word: tl.constexpr = 32 // BITS
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < K
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & kmask[None, :], other=0.0)
        wmask = kmask[:, None] & (rn[None, :] < N)
        word = tl.load(qweight_ptr + (rk[:, None] // per_word) * N + rn[None, :], mask=wmask, other=0)
        q = (word >> ((rk[:, None] % per_word) * BITS)) & ((1 << BITS) - 1)
        g = tl.load(g_idx_ptr + rk, mask=kmask, other=0)
        z = tl.load(zeros_ptr + g[:, None] * N + rn[None, :], mask=wmask, other=0)
        s = tl.load(scales_ptr + g[:, None] * N + rn[None, :], mask=wmask, other=0.0).to(tl.float32)
        w = (s * (q - z).to(tl.float32)).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul(x: torch.Tensor, qweight: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
           bits: int) -> torch.Tensor:
    """``x (m, in) @ W (in, out)`` in x's dtype, float32 accumulation."""
    if bits not in BITS:
        raise ValueError(f"the Triton GPTQ kernel takes bits {BITS}, not {bits}")
    x = x.contiguous()
    m, k = x.shape
    n = qweight.shape[1]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    _matmul_kernel[grid](x, qweight.contiguous(), zeros.to(torch.int32).contiguous(), scales.contiguous(),
                         g_idx.to(torch.int32).contiguous(), y, m, n, k, BITS=bits, BLOCK_M=block_m, BLOCK_N=64,
                         BLOCK_K=64, IEEE=x.dtype == torch.float32)
    return y
