"""Test-side truth, written from the format description (DeepSeek-V3 / vLLM block FP8), not from qcore_fp8.

``reference_quantize`` / ``reference_dequantize`` loop over blocks one at a time; ``write_checkpoint``
writes a checkpoint directory with safetensors directly. None of it imports qcore_fp8.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FP8_MAX = 448.0


def reference_quantize(weight: torch.Tensor, block: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block (edge blocks: only the rows/cols that exist): scale = 448/amax, q = fp8(clamp(w*scale)), inv = 1/scale;
    an all-zero block gets scale 1. Per tensor when ``block`` is None (inv is then a 0-dim tensor)."""
    rows, cols = weight.shape
    bn, bk = block if block is not None else (rows, cols)
    grid = (math.ceil(rows / bn), math.ceil(cols / bk))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    inv = torch.empty(grid, dtype=torch.float32)
    for i in range(grid[0]):
        for j in range(grid[1]):
            sub = weight[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk].float()
            amax = sub.abs().max()
            scale = torch.tensor(FP8_MAX, dtype=torch.float32) / amax if amax > 0 else torch.tensor(1.0)
            inv[i, j] = 1.0 / scale
            q[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk] = (sub * scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, (inv.reshape(()) if block is None else inv)


def reference_dequantize(q: torch.Tensor, inv: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """float32 W[i, j] = float(q[i, j]) * inv[i // bn, j // bk] (one block at a time)."""
    rows, cols = q.shape
    if block is None:
        return q.float() * inv.float().reshape(())
    bn, bk = block
    out = torch.empty(rows, cols)
    for i in range(math.ceil(rows / bn)):
        for j in range(math.ceil(cols / bk)):
            sl = (slice(i * bn, (i + 1) * bn), slice(j * bk, (j + 1) * bk))
            out[sl] = q[sl].float() * inv[i, j].float()
    return out


def transformers_quantize(weight: torch.Tensor, block: tuple[int, int] | None, scale_fmt: str = "float") -> dict:
    """transformers' own FP8 quantize op (``Fp8Quantize``), called directly (it runs on CPU)."""
    from types import SimpleNamespace

    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    config = FineGrainedFP8Config(weight_block_size=block, scale_fmt=scale_fmt)
    out = Fp8Quantize(SimpleNamespace(quantization_config=config))._quantize_one("m.weight", weight)
    return {"weight": out["m.weight"], "weight_scale_inv": out.get("m.weight_scale_inv")}


def linear_names(model: torch.nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rpartition(".")[2] not in skip]


def write_checkpoint(path: Path, model: torch.nn.Module, quantization_config: dict, quantize) -> dict[str, torch.Tensor]:
    """Write ``model`` as an FP8 checkpoint: every linear but lm_head through ``quantize(name, weight) -> tensors``."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for name in linear_names(model):
        weight = state.pop(f"{name}.weight")
        for rel, tensor in quantize(name, weight).items():
            state[f"{name}.{rel}"] = tensor.contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return state
