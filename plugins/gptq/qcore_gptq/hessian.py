"""The Gram matrix ``X^T X`` of a layer's calibration inputs, in float32, once per input tensor.

Linears that read the same tensor (q/k/v, gate/up in a llama block) get their
``calibration_add_batch`` calls one after the other with that same tensor: the product is
computed for the first and handed to the others. The cache holds the tensor itself, so its
storage cannot be freed and reused by another tensor while the entry lives; an in-place change
of the tensor bumps its version counter, which is part of the key.
"""

from __future__ import annotations

import torch

_last: tuple[torch.Tensor, tuple, torch.Tensor, int] | None = None  # (inputs, key, gram, its number)
_computed = 0  # products computed so far: each gets a number, so states can tell whose H came from the same inputs


SYMMETRIC_FROM = 512  # widths from which three of the four half-blocks of x^T x are multiplied, the fourth mirrored


def gram(x: torch.Tensor) -> torch.Tensor:
    """``x^T x`` in float32 for ``x`` (rows, d) of any float dtype; float32 (d, d).

    The product is symmetric: from ``SYMMETRIC_FROM`` columns on, the upper-right half-block is
    mirrored instead of multiplied (3/4 of the multiplications; about 23% faster at d = 1536).
    """
    x = x.float()
    d = x.shape[1]
    if d < SYMMETRIC_FROM:
        return x.T @ x
    a, b = x[:, :d // 2], x[:, d // 2:]
    ab = a.T @ b
    return torch.cat([torch.cat([a.T @ a, ab], dim=1), torch.cat([ab.T, b.T @ b], dim=1)])


def shared_gram(inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """:func:`gram` of ``inputs`` (..., d) flattened to rows, reused while the same tensor comes again;
    with the product's number (equal numbers: the same inputs)."""
    global _last, _computed
    key = (inputs.data_ptr(), tuple(inputs.shape), tuple(inputs.stride()), inputs._version, inputs.dtype, inputs.device)
    if _last is not None and _last[1] == key:
        return _last[2], _last[3]
    _last = None  # free the previous product before computing the next
    product = gram(inputs.reshape(-1, inputs.shape[-1]))
    _computed += 1
    _last = (inputs, key, product, _computed)
    return product, _computed


def forget_gram() -> None:
    """Drop the cached product (the driver is done feeding batches)."""
    global _last
    _last = None
