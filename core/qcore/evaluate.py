"""Perplexity, decode latency and prefill throughput with a fixed, documented protocol.

Perplexity protocol (docs/evaluation.md): tokenize the whole text once (no special
tokens added), keep the first ``max_tokens`` tokens, cut them into non-overlapping
windows of ``window`` tokens (the last, shorter one dropped), and report
``exp(mean NLL over every predicted token)``: each window predicts its tokens 2..window
from the ones before, with no context carried between windows.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_MAX_TOKENS = 4096
DEFAULT_WINDOW = 512


def token_windows(ids: torch.Tensor, window: int, max_tokens: int) -> list[torch.Tensor]:
    """Non-overlapping ``(1, window)`` windows of the first ``max_tokens`` ids."""
    ids = ids.reshape(-1)[:max_tokens]
    count = ids.numel() // window
    if count == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of {window}; give more text")
    return [ids[i * window:(i + 1) * window].unsqueeze(0) for i in range(count)]


def perplexity(model: nn.Module, tokenizer: Any, text: str, *, max_tokens: int = DEFAULT_MAX_TOKENS,
               window: int = DEFAULT_WINDOW, progress: bool = False) -> dict[str, Any]:
    """Perplexity of ``text`` under ``model`` (see the module docstring for the protocol)."""
    from tqdm.auto import tqdm

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    windows = token_windows(ids, window, max_tokens)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for chunk in tqdm(windows, desc="perplexity", unit="window", disable=not progress, leave=False):
            chunk = chunk.to(device)
            logits = model(chunk, use_cache=False).logits[:, :-1].float()
            nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
            total_nll += float(nll)
            total_tokens += chunk.shape[1] - 1
    return {"perplexity": math.exp(total_nll / total_tokens), "tokens": total_tokens, "windows": len(windows),
            "window": window, "max_tokens": max_tokens}


def decode_latency(model: nn.Module, tokenizer: Any, prompt: str = "The licence gives you the freedom to",
                   new_tokens: int = 32, warmup: int = 4) -> dict[str, float]:
    """Greedy decoding at batch 1 with a KV cache: mean milliseconds per new token (warm-up excluded)."""
    ms = decode_ms(model, tokenizer(prompt, return_tensors="pt").input_ids, new_tokens, warmup)
    return {"ms_per_token": ms, "tokens_per_s": 1000 / ms}


def decode_ms(model: nn.Module, ids: torch.Tensor, new_tokens: int, warmup: int = 0,
              on_start: Callable[[], Any] | None = None) -> float:
    """Mean milliseconds per greedy decode step (batch 1, KV cache) after the prompt ``ids`` and ``warmup``
    untimed steps; ``on_start()`` is called just before the timed steps."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(warmup):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        if on_start is not None:
            on_start()
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        elapsed = time.perf_counter() - start
    return 1000 * elapsed / new_tokens


def prefill_throughput(model: nn.Module, tokens: int = 512, repeats: int = 2) -> dict[str, float]:
    """Tokens per second for one forward over ``tokens`` tokens at batch 1 (best of ``repeats``)."""
    vocab = model.config.vocab_size if hasattr(model, "config") else 256
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    best = float("inf")
    with torch.no_grad():
        model(ids[:, :16], use_cache=False)
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids, use_cache=False)
            best = min(best, time.perf_counter() - start)
    return {"tokens_per_s": tokens / best}


def run_eval(args: argparse.Namespace) -> int:
    import qcore
    from qcore.errors import QcoreError

    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise QcoreError("qcore eval needs transformers for the tokenizer: pip install 'qcore[hf]'") from exc
    text_path = Path(args.text)
    if not text_path.is_file():
        raise QcoreError(f"text file {text_path} does not exist")
    try:
        text = text_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QcoreError(f"text file {text_path} is not UTF-8 ({exc.reason} at byte {exc.start}); convert it first") from None
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.checkpoint, trust_remote_code=args.trust_remote_code)
    model = qcore.load_quantized(args.checkpoint, trust_remote_code=args.trust_remote_code)
    result = perplexity(model, tokenizer, text, max_tokens=args.max_tokens,
                        window=args.window, progress=True)
    result["checkpoint"] = str(args.checkpoint)
    result["method"] = model.qcore_config.quant_method if model.qcore_config else "float"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['method']}: perplexity {result['perplexity']:.3f} over {result['tokens']} tokens "
              f"({result['windows']} windows of {result['window']})")
    return 0
