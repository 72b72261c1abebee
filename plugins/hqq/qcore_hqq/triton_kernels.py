"""Triton GPU kernel for HQQ layers (imported only when a CUDA tensor needs it).

``y = x @ W.T`` with ``W = (W_q - zero) * scale`` in hqq's grouped layout, decoded per ``(BLOCK_K,
BLOCK_N)`` tile in registers straight from hqq's packed ``W_q`` (uint8: 8, 4, 2 or 1 bits per code;
``per = 8 / nbits`` codes per byte, code row ``r`` in byte row ``r % step`` at bits
``nbits * (per - 1 - r // step)``, ``step = rows / per``), for both axes: axis 1 groups ``g``
consecutive weights of a row (codes ``(numel / g, g)``, one scale and zero per code row), axis 0
takes ``(g, numel / g)`` (one scale and zero per code column). The zero is a float, as hqq's.
3-bit (int32 words of 10 codes) keeps the reference path. Tested on CPU with Triton's interpreter
(``TRITON_INTERPRET=1``) when no GPU is present.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NBITS = (1, 2, 4, 8)


@triton.jit
def _matmul_kernel(x_ptr, wq_ptr, scale_ptr, zero_ptr, y_ptr, M, N, K, C, STEP,
                   NBITS: tl.constexpr, AXIS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    per: tl.constexpr = 8 // NBITS
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < K
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & kmask[None, :], other=0.0)
        wmask = kmask[:, None] & (rn[None, :] < N)
        flat = rn[None, :].to(tl.int64) * K + rk[:, None]  # (BLOCK_K, BLOCK_N): W[n, k]'s place in W.view(-1)
        row, col = flat // C, flat % C  # in the grouped code matrix (rows, C)
        byte = tl.load(wq_ptr + (row % STEP) * C + col, mask=wmask, other=0).to(tl.int32)
        q = (byte >> (NBITS * (per - 1 - row // STEP))) & ((1 << NBITS) - 1)
        group = row if AXIS == 1 else col
        s = tl.load(scale_ptr + group, mask=wmask, other=0.0).to(tl.float32)
        z = tl.load(zero_ptr + group, mask=wmask, other=0.0).to(tl.float32)
        w = ((q.to(tl.float32) - z) * s).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, w, input_precision="ieee")
        else:
            acc += tl.dot(x, w)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul(x: torch.Tensor, W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, nbits: int, group_size: int,
           axis: int, shape: tuple[int, int]) -> torch.Tensor:
    """``x (m, in) @ W.T`` for ``W`` of ``shape`` (out, in), in x's dtype, float32 accumulation."""
    if nbits not in NBITS or axis not in (0, 1):
        raise ValueError(f"the Triton HQQ kernel takes nbits {NBITS} and axis 0 or 1, not nbits={nbits}, axis={axis}")
    n, k = shape
    numel = n * k
    cols = group_size if axis == 1 else numel // group_size
    rows = numel // cols
    per = 8 // nbits
    groups = rows if axis == 1 else cols
    if (numel % group_size or rows % per or W_q.dtype != torch.uint8 or W_q.shape != (rows // per, cols)
            or scale.numel() != groups or zero.numel() != groups or x.shape[-1] != k):
        raise ValueError(f"HQQ tensors W_q {W_q.dtype} {list(W_q.shape)}, scale {list(scale.shape)}, zero "
                         f"{list(zero.shape)} do not fit a {list(shape)} weight in {nbits}-bit groups of {group_size} "
                         f"(axis {axis}) and x {list(x.shape)}")
    x = x.contiguous()
    m = x.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    _matmul_kernel[grid](x, W_q.contiguous(), scale.contiguous(), zero.contiguous(), y, m, n, k, cols, rows // per,
                         NBITS=nbits, AXIS=axis, BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=32, IEEE=x.dtype == torch.float32)
    return y
