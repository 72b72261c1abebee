"""Triton GPU kernels for bitsandbytes' 4-bit format (imported only when a CUDA tensor needs them).

One fused kernel: ``y = x @ W.T`` where each ``(BLOCK_N, BLOCK_K)`` tile of W is decoded in
registers from the packed nibbles (``code[nibble] * absmax[block]``, as bitsandbytes) and fed to
``tl.dot``; W is never written to memory. A second kernel dequantizes W (for ``dequantize()``
and for checks). Tested on CPU with Triton's interpreter (``TRITON_INTERPRET=1``) when no GPU
is present; see docs/methods/bnb.md for what has run on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _decode(packed_ptr, absmax_ptr, code_ptr, n_idx, k_idx, K, blocksize, mask):
    """W[n, k] for broadcastable index tensors n_idx, k_idx (flattened index n*K + k)."""
    flat = n_idx.to(tl.int64) * K + k_idx
    byte = tl.load(packed_ptr + flat // 2, mask=mask, other=0).to(tl.int32)
    nibble = tl.where(flat % 2 == 0, byte >> 4, byte & 15)
    return tl.load(code_ptr + nibble, mask=mask, other=0.0) * tl.load(absmax_ptr + flat // blocksize, mask=mask, other=0.0)


@triton.jit
def _dequant_kernel(packed_ptr, absmax_ptr, code_ptr, out_ptr, N, K, blocksize, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N * K
    w = _decode(packed_ptr, absmax_ptr, code_ptr, offs // K, offs % K, K, blocksize, mask)
    tl.store(out_ptr + offs, w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _matmul_kernel(x_ptr, packed_ptr, absmax_ptr, code_ptr, y_ptr, M, N, K, blocksize,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w_mask = (rn[:, None] < N) & (rk[None, :] < K)
        w = _decode(packed_ptr, absmax_ptr, code_ptr, rn[:, None], rk[None, :], K, blocksize, w_mask)
        if IEEE:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def _on(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float32, contiguous, on ``like``'s device (the 16-value code may still sit on the CPU)."""
    return t.to(device=like.device, dtype=torch.float32).contiguous()


def dequantize(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: tuple[int, int], code: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    n, k = shape
    out = torch.empty(shape, dtype=dtype, device=packed.device)
    block = 1024
    _dequant_kernel[(triton.cdiv(n * k, block),)](packed.view(torch.uint8).reshape(-1), _on(absmax, packed),
                                                  _on(code, packed), out, n, k, blocksize, BLOCK=block)
    return out


def matmul(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: tuple[int, int],
           code: torch.Tensor) -> torch.Tensor:
    """``x (m, K) @ W.T`` in x's dtype (float32 accumulation)."""
    n, k = shape
    x = x.contiguous()
    m = x.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    _matmul_kernel[grid](x, packed.view(torch.uint8).reshape(-1), _on(absmax, packed), _on(code, packed),
                         y, m, n, k, blocksize, BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=64, IEEE=x.dtype == torch.float32)
    return y
