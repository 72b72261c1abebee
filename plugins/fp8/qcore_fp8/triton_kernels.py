"""Triton GPU kernel for block-FP8 weights (imported only when a CUDA tensor needs it).

``y = x @ W.T`` where each ``(BLOCK_N, BLOCK_K)`` tile of W is decoded in registers from its
float8_e4m3fn bytes and multiplied by its block scale (``weight_scale_inv[n // bn, k // bk]``, so any
block size and edge blocks work), cast to x's dtype and fed to ``tl.dot`` with float32 accumulation.
W is never written to memory. Weight-only: activations are not quantized, so the result is the
reference's (dequantize + matmul) up to summation order. The e4m3 bytes are decoded with integer
ops (no FP8 hardware needed; subnormals handled exactly). Tested on CPU with Triton's interpreter
(``TRITON_INTERPRET=1``) when no GPU is present; see docs/methods/fp8.md for what ran on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _decode_e4m3(byte):
    """int32 codes 0..255 (float8_e4m3fn bits S.EEEE.MMM, bias 7) -> float32 values (NaN codes excluded)."""
    exp = (byte >> 3) & 15
    man = byte & 7
    normal = (((exp + 120) << 23) | (man << 20)).to(tl.float32, bitcast=True)  # 2^(exp-7) * (1 + man/8)
    value = tl.where(exp == 0, man.to(tl.float32) * 0.001953125, normal)  # subnormal: man/8 * 2^-6 = man * 2^-9
    return tl.where((byte & 128) != 0, -value, value)


@triton.jit
def _matmul_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, scale_cols, bn, bk,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TILE_IN_ONE_BLOCK: tl.constexpr,
                   IEEE: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    scale_rows = (rn // bn) * scale_cols
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w_mask = (rn[:, None] < N) & (rk[None, :] < K)
        byte = tl.load(w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :], mask=w_mask, other=0).to(tl.int32)
        if TILE_IN_ONE_BLOCK:  # the tile's columns share one block column: one scale per output row
            scale = tl.load(s_ptr + scale_rows + k0 // bk, mask=rn < N, other=0.0)
            w = (_decode_e4m3(byte) * scale[:, None]).to(x.dtype)
        else:
            scale = tl.load(s_ptr + scale_rows[:, None] + rk[None, :] // bk, mask=w_mask, other=0.0)
            w = (_decode_e4m3(byte) * scale).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, block_size: tuple[int, int] | None) -> torch.Tensor:
    """``x (M, K)`` float32/float16/bfloat16 @ ``W.T`` -> ``(M, N)`` in x's dtype.

    :param weight: float8_e4m3fn ``(N, K)``, on x's device.
    :param scales: float32 ``(ceil(N/bn), ceil(K/bk))``, or one value per tensor (``block_size`` None).
    """
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features but the weight is {list(weight.shape)}")
    bn, bk = block_size if block_size is not None else (n, k)
    x = x.contiguous()
    scales = scales.to(device=x.device, dtype=torch.float32).reshape(1, 1) if block_size is None else scales.float().contiguous()
    m = x.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    block_m = 16 if m <= 16 else 64
    block_n = 32 if m <= 16 else 64  # decoding: more programs over N to fill the GPU
    block_k = 128 if bk % 128 == 0 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _matmul_kernel[grid](x, weight.contiguous().view(torch.uint8), scales, y, m, n, k, scales.shape[1], bn, bk,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, TILE_IN_ONE_BLOCK=bk % block_k == 0,
                         IEEE=x.dtype == torch.float32)
    return y
