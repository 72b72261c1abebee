"""Perplexity protocol against an independent computation (transformers' own loss)."""

import math

import pytest
import torch

from qcore.evaluate import decode_latency, perplexity, prefill_throughput, token_windows


class CharTokenizer:
    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        return type("Enc", (), {"input_ids": torch.tensor([[ord(c) % 256 for c in text]])})()


def test_perplexity_equals_the_mean_of_transformers_window_losses(tiny_model):
    text = "free software " * 200
    result = perplexity(tiny_model, CharTokenizer(), text, max_tokens=1000, window=128)
    ids = torch.tensor([[ord(c) % 256 for c in text]])[:, :1000]
    losses = []
    with torch.no_grad():
        for i in range(1000 // 128):  # every window holds 127 predicted tokens, so the mean of means is the mean
            chunk = ids[:, i * 128:(i + 1) * 128]
            losses.append(tiny_model(chunk, labels=chunk).loss)
    assert result["windows"] == 7 and result["tokens"] == 7 * 127
    assert math.isclose(result["perplexity"], math.exp(torch.stack(losses).mean().item()), rel_tol=1e-5)


def test_too_short_text_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one window"):
        token_windows(torch.arange(10), window=128, max_tokens=4096)


def test_speed_measurements_report_positive_rates(tiny_model):
    class Tok(CharTokenizer):
        pass

    latency = decode_latency(tiny_model, Tok(), prompt="hello", new_tokens=4, warmup=1)
    assert latency["ms_per_token"] > 0 and latency["tokens_per_s"] > 0
    assert prefill_throughput(tiny_model, tokens=32, repeats=1)["tokens_per_s"] > 0
