"""GPTQ (Frantar et al., 2022, https://arxiv.org/abs/2210.17323): quantize one linear layer's
weight column by column, each column's rounding error spread over the not yet quantized
columns through the inverse Hessian ``H^-1`` of the layer inputs (``H = 2 X^T X``).

Lazy batch updates: columns are processed in blocks of ``blocksize`` (128); inside a
block the updates use the upper Cholesky factor of ``H^-1``; the block's accumulated
error is applied to the remaining columns once per block.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .quantizer import group_params


@dataclass
class GPTQResult:
    """Integer codes and parameters of one layer, in the original column order.

    ``q``: int64 (out, in) in [0, 2**bits); ``scales``: float32 (n_groups, out);
    ``zeros``: int64 (n_groups, out); ``g_idx``: int64 (in,) group of every input column.
    """

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor


def inverse_hessian_cholesky(H: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp*I)^-1``; dampening grows (x10, with a warning) until H is positive definite."""
    damp = damp_percent * torch.mean(torch.diag(H).abs()).clamp(min=1e-8)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for attempt in range(8):
        try:
            L = torch.linalg.cholesky(H + damp * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
        except torch.linalg.LinAlgError:
            damp = damp * 10
            warnings.warn(f"GPTQ: Hessian is not positive definite; raising dampening to {float(damp):.3g} (try {attempt + 2})",
                          stacklevel=3)
    raise RuntimeError("GPTQ: the Hessian stayed singular after raising dampening 8 times; check the calibration data")


def group_aware_order(diag_h: torch.Tensor, group_size: int) -> torch.Tensor:
    """Group-aware reordering (GAR, gptqmodel's ``act_group_aware``): the order to quantize columns in.

    Groups stay the contiguous groups of the saved layout (``column // group_size``, the last one
    possibly partial); inside each group, columns go by decreasing ``diag(H)``; the groups go by
    decreasing largest ``diag(H)`` (ties keep the original group order). So important columns are
    quantized first, as with act-order, but no ``g_idx`` indirection is needed at inference.

    :param diag_h: float (in,), the Hessian diagonal.
    :returns: int64 (in,) ``order[position] = column``.
    """
    columns = diag_h.numel()
    starts = list(range(0, columns, group_size))
    local = [start + torch.sort(diag_h[start:start + group_size], descending=True, stable=True).indices
             for start in starts]
    scores = torch.stack([diag_h[start:start + group_size].max() for start in starts])
    ranking = torch.sort(scores, descending=True, stable=True).indices
    return torch.cat([local[int(g)] for g in ranking])


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, sym: bool = True,
                  desc_act: bool = False, damp_percent: float = 0.01, static_groups: bool = False,
                  blocksize: int = 128, min_zero: int = 0, act_group_aware: bool = False) -> GPTQResult:
    """Run GPTQ on one layer.

    :param weight: float (out, in).
    :param H: float32 (in, in), the accumulated ``2/n X^T X`` of the layer inputs.
    :param group_size: columns per group (-1: one group for the whole row).
    :param desc_act: quantize columns in order of decreasing ``diag(H)`` (act-order); groups follow that
        order, so the saved ``g_idx`` maps columns to groups.
    :param static_groups: group parameters from the unmodified weight, before any update.
    :param min_zero: smallest zero point (1 when writing the v1 format, which stores zero-1).
    :param act_group_aware: with ``desc_act=False``, quantize in the group-aware order
        (:func:`group_aware_order`); the groups stay contiguous, ``g_idx`` stays ``column // group_size``.
    """
    W = weight.detach().clone().float()
    H = H.detach().clone().float()
    out_features, columns = W.shape
    maxq = (1 << bits) - 1
    gs = columns if group_size == -1 else group_size
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    static = None
    if static_groups:
        static = [group_params(W[:, g:g + gs], bits, sym, min_zero) for g in range(0, columns, gs)]
    perm = torch.arange(columns)
    if desc_act:
        perm = torch.argsort(torch.diag(H), descending=True)
    elif act_group_aware and gs < columns:
        perm = group_aware_order(torch.diag(H), gs)
    # the group of each position in quantization order, and where each group's run of positions starts
    if desc_act or not act_group_aware:
        group_at = torch.arange(columns) // gs
    else:
        group_at = perm // gs
    run_start = {int(p): int(group_at[p]) for p in range(columns) if p == 0 or group_at[p] != group_at[p - 1]}
    run_length = torch.bincount(group_at).tolist()
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = inverse_hessian_cholesky(H, damp_percent)

    Q = torch.zeros_like(W)  # integer codes, held as float until the end
    scales: dict[int, torch.Tensor] = {}
    zeros: dict[int, torch.Tensor] = {}
    scale = zero = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        diagonal = Hinv1.diagonal().tolist()
        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                group = int(perm[col]) // gs
                scale, zero = static[group]
                scales[group], zeros[group] = scale, zero
                zero = zero.to(W.dtype)
            elif col in run_start:
                group = run_start[col]
                length = run_length[group]
                # parameters from the group's columns with every earlier column's error applied: the
                # rest of this block (W1) plus, for a group running past the block, the pending updates
                beyond = W[:, i2:i1 + i + length] - Err1 @ Hinv[i1:i2, i2:i1 + i + length]
                scale, zero = group_params(torch.cat([W1[:, i:], beyond], dim=1)[:, :length], bits, sym, min_zero)
                scales[group], zeros[group] = scale, zero
                zero = zero.to(W.dtype)
            # one column: the fewest tensor operations (this loop runs once per input column)
            w = W1[:, i]
            q = torch.clamp_(torch.round_(w / scale).add_(zero), 0, maxq)
            Q[:, col] = q
            err = Err1[:, i]
            torch.sub(w, q.sub_(zero).mul_(scale), out=err)
            err.div_(diagonal[i])
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if static is not None:
        g_idx = torch.arange(columns) // gs  # groups are fixed on the original columns
    else:
        g_idx = torch.empty(columns, dtype=torch.int64)
        g_idx[perm] = group_at  # column perm[j] was quantized in group group_at[j]
    inverse = torch.argsort(perm)
    n_groups = -(-columns // gs)
    return GPTQResult(
        q=Q[:, inverse].to(torch.int64),
        scales=torch.stack([scales[g] for g in range(n_groups)]),
        zeros=torch.stack([zeros[g] for g in range(n_groups)]),
        g_idx=g_idx,
    )


def split_rows(result: GPTQResult, sizes: list[int]) -> list[GPTQResult]:
    """The results of linears solved as one stacked weight (rows ``sizes[0]``, then ``sizes[1]``...), each its own."""
    if len(sizes) == 1:
        return [result]
    return [GPTQResult(q=q.contiguous(), scales=s.contiguous(), zeros=z.contiguous(), g_idx=result.g_idx.clone())
            for q, s, z in zip(result.q.split(sizes), result.scales.split(sizes, dim=1), result.zeros.split(sizes, dim=1),
                               strict=True)]


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int, sym: bool = True, min_zero: int = 0) -> GPTQResult:
    """Round-to-nearest with GPTQ's group parameters and format (no data, no error feedback)."""
    W = weight.detach().float()
    columns = W.shape[1]
    gs = columns if group_size == -1 else group_size
    maxq = (1 << bits) - 1
    params = [group_params(W[:, g:g + gs], bits, sym, min_zero) for g in range(0, columns, gs)]
    g_idx = torch.arange(columns) // gs
    scales = torch.stack([p[0] for p in params])
    zeros = torch.stack([p[1] for p in params])
    q = torch.clamp(torch.round(W / scales[g_idx].T) + zeros[g_idx].T, 0, maxq).to(torch.int64)
    return GPTQResult(q=q, scales=scales, zeros=zeros, g_idx=g_idx)
