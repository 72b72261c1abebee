"""AWQ's two searches, as AutoAWQ 0.2.9 does them (awq/quantize/quantizer.py).

- Scale search: per input channel ``s = mean|x|^r / (mean|w~|^(1-r) + 1e-4)`` (duo scaling; ``w~`` the
  weights normalised by their group's max |w|), normalised by ``sqrt(max(s) min(s))``, for ``r`` on a
  grid of 20 ratios 0, 0.05 ... 0.95; the ratio whose pseudo-quantized ``Q(W s) / s`` gives the
  smallest mean squared error of the inspected module's output (the attention block for q/k/v, the
  MLP for gate/up, the linear itself otherwise) against the float output wins.
- Clip search: per output channel and group, the max |w| shrunk by ``1 - i/20`` for ``i`` in 0..9;
  the one whose pseudo-quantized, clamped weights give the smallest squared error of ``x w`` on
  (at most ~512 evenly spaced) calibration tokens wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .quantizer import pseudo_quantize

N_GRID = 20
MAX_SHRINK = 0.5
N_SAMPLE_TOKENS = 512
CLIP_CHANNEL_BATCH = 256  # output channels searched at once (bounds the memory of the search)


@dataclass
class ScaleSearch:
    """The chosen ratio, its per-input-channel scales (in,) and the losses of the whole grid."""

    ratio: float
    scales: torch.Tensor
    losses: list[float]


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _finite(t: torch.Tensor) -> torch.Tensor:
    return t.clip(torch.finfo(t.dtype).min, torch.finfo(t.dtype).max)


def input_channel_mean(inputs: list[torch.Tensor]) -> torch.Tensor:
    """mean |x| per input channel over every token of every batch, summed in float32, in x's dtype."""
    total = sum(x.reshape(-1, x.shape[-1]).abs().float().sum(0) for x in inputs)
    count = sum(x.numel() // x.shape[-1] for x in inputs)
    return (total / count).to(inputs[0].dtype)


def weight_channel_mean(linears: list[nn.Linear], group_size: int) -> torch.Tensor:
    """mean over output rows of |w| / max |w| of its group, per input channel (in,)."""
    weight = torch.cat([fc.weight for fc in linears], dim=0)
    groups = weight.reshape(-1, group_size).abs()
    return (groups / (groups.amax(dim=1, keepdim=True) + 1e-6)).reshape(weight.shape).mean(0)


@torch.no_grad()
def search_scale(inputs: list[torch.Tensor], kwargs: list[dict[str, Any]], linears: list[nn.Linear], inspect: nn.Module,
                 group_size: int) -> ScaleSearch:
    """Grid-search the AWQ scales of ``linears``, which all read ``inputs``.

    :param inputs: the linears' input, one tensor (batch, seq, in) per calibration batch.
    :param kwargs: keyword arguments ``inspect`` was called with, one dict per batch.
    :param linears: the float linears that the scales multiply (their weights are restored).
    :param inspect: the module whose output the loss compares (contains ``linears``).
    """
    x_mean = input_channel_mean(inputs).reshape(-1)
    w_mean = weight_channel_mean(linears, group_size).reshape(-1)
    float_out = [_finite(_first(inspect(x, **kw))) for x, kw in zip(inputs, kwargs, strict=True)]
    elements = sum(o.numel() for o in float_out)
    originals = [fc.weight.data.clone() for fc in linears]
    best: ScaleSearch | None = None
    losses: list[float] = []
    for step in range(N_GRID):
        ratio = step / N_GRID
        scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()
        scales[torch.isinf(scales)] = 1
        scales[torch.isnan(scales)] = 1
        row = scales.view(1, -1)
        for fc, original in zip(linears, originals, strict=True):
            fc.weight.data = pseudo_quantize(original * row, group_size) / row
        loss = 0.0
        for x, kw, ref in zip(inputs, kwargs, float_out, strict=True):
            loss += float((ref - _finite(_first(inspect(x, **kw)))).float().pow(2).sum())
        loss /= elements
        if loss < min(losses, default=float("inf")):  # strict: ties keep the smaller ratio, as AutoAWQ
            best = ScaleSearch(ratio, scales.clone(), losses)
        losses.append(loss)
    for fc, original in zip(linears, originals, strict=True):
        fc.weight.data = original
    if best is None:
        raise ValueError("every ratio of the AWQ scale search gave a NaN loss; the calibration inputs or weights hold NaN")
    return best


@torch.no_grad()
def search_clip(weight: torch.Tensor, inputs: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Best clipping threshold per output channel and group.

    :param weight: float (out, in), already multiplied by the AWQ scales.
    :param inputs: the layer's inputs (already divided by the scales), one tensor (..., in) per batch.
    :returns: max |w| to clamp to, (out, in / group_size, 1), in weight's dtype (the search runs in float32).
    """
    dtype, weight = weight.dtype, weight.float()
    out_features, in_features = weight.shape
    tokens = torch.cat([x.reshape(-1, in_features).float() for x in inputs])
    step = max(1, tokens.shape[0] // N_SAMPLE_TOKENS)
    x = tokens[::step].reshape(-1, in_features // group_size, group_size).transpose(0, 1)  # (G, n, gs)
    w_all = weight.reshape(out_features, in_features // group_size, group_size)
    best_all = []
    for start in range(0, out_features, CLIP_CHANNEL_BATCH):
        w = w_all[start:start + CLIP_CHANNEL_BATCH]  # (co, G, gs)
        org_max = w.abs().amax(dim=-1, keepdim=True)  # (co, G, 1)
        best_max = org_max.clone()
        min_errs = torch.full_like(org_max, float("inf"))
        org_out = torch.bmm(x, w.permute(1, 2, 0))  # (G, n, co)
        for i_s in range(int(MAX_SHRINK * N_GRID)):
            max_val = org_max * (1 - i_s / N_GRID)
            q_w = pseudo_quantize(torch.clamp(w, -max_val, max_val), group_size)
            cur_out = torch.bmm(x, q_w.permute(1, 2, 0))
            err = (cur_out - org_out).pow(2).mean(dim=1).T.unsqueeze(-1)  # (co, G, 1)
            better = err < min_errs
            min_errs[better] = err[better]
            best_max[better] = max_val[better]
        best_all.append(best_max)
    return torch.cat(best_all).to(dtype)
