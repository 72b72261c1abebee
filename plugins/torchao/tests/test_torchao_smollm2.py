"""SmolLM2-135M: qcore's on-the-fly torchao quantization against transformers + torchao on real weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchao_helpers import torchao_configs

import qcore

pytestmark = pytest.mark.slow


def test_smollm2_int8_weight_only_perplexity_identical_to_transformers():
    preset = "torchao-int8wo"
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    from qcore.evaluate import perplexity
    from qcore.testdata import reference_text, smollm2_checkpoint

    src = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(src)
    ours = qcore.load_quantized(src, quantization_config=preset, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, quantization_config=TorchAoConfig(torchao_configs()[preset])).eval()
    text = reference_text()
    ppl_ours = perplexity(ours, tokenizer, text, max_tokens=256, window=128)
    ppl_theirs = perplexity(theirs, tokenizer, text, max_tokens=256, window=128)
    assert ppl_ours["perplexity"] == ppl_theirs["perplexity"]
    float_model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ppl_float = perplexity(float_model, tokenizer, text, max_tokens=256, window=128)["perplexity"]
    assert ppl_float < ppl_ours["perplexity"] < 1.02 * ppl_float  # int8 weights cost well under 2%
    # a decode step goes through the plugin's CPU kernels (float32, the int8 GEMV): close to torchao's float32 path
    from qcore.testing import relative_error

    prompt = tokenizer("The licence gives you the freedom to", return_tensors="pt").input_ids
    with torch.no_grad():
        past_ours, past_theirs = ours(prompt, use_cache=True), theirs(prompt, use_cache=True)
        token = past_theirs.logits[:, -1:].argmax(-1)
        step_ours = ours(token, past_key_values=past_ours.past_key_values, use_cache=True).logits
        step_theirs = theirs(token, past_key_values=past_theirs.past_key_values, use_cache=True).logits
    assert relative_error(step_ours, step_theirs) < 0.01
    assert step_ours.argmax(-1).item() == step_theirs.argmax(-1).item()
