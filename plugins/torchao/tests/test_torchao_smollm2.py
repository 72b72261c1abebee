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


def test_smollm2_int4_weight_only_on_cpu(tmp_path):
    """Int4WeightOnlyConfig (plain Int4Tensor) made and run on the CPU: perplexity equals the float model holding
    the weights torchao's own CPU dequantizer (``_int4_row_dequantize_zp``) makes of the saved tensors, and the
    checkpoint reloads to identical logits."""
    from safetensors.torch import load_file
    from torchao.prototype.gptq.api import _int4_row_dequantize_zp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qcore.evaluate import perplexity
    from qcore.testdata import reference_text, smollm2_checkpoint

    src = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(src)
    ours = qcore.load_quantized(src, quantization_config="torchao-int4wo-g64", progress=False)
    saved = qcore.save_quantized(ours, tmp_path / "int4")
    tensors = {}
    for shard in sorted(saved.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    reference = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    text = reference_text()
    ppl_float = perplexity(reference, tokenizer, text, max_tokens=1024, window=512)["perplexity"]
    for name in ours.qcore_modules:
        q = tensors[f"{name}._weight_qdata"]
        nibbles = torch.stack([(q << 4) >> 4, q >> 4], dim=-1).view(q.shape[0], -1)  # signed low, high nibble
        reference.get_submodule(name).weight.data = _int4_row_dequantize_zp(
            nibbles, tensors[f"{name}._weight_scale"], tensors[f"{name}._weight_zero_point"], 64)
    ppl_ours = perplexity(ours, tokenizer, text, max_tokens=1024, window=512)["perplexity"]
    ppl_reference = perplexity(reference, tokenizer, text, max_tokens=1024, window=512)["perplexity"]
    assert abs(ppl_ours - ppl_reference) < 1e-3 * ppl_reference
    # min/max groups without an exact zero (mslk's scheme) cost SmolLM2 more than torchao's intx int4 does
    print(f"SmolLM2 perplexity, 1024 tokens: float {ppl_float:.4f}, Int4WeightOnlyConfig g64 {ppl_ours:.4f}")
    assert ppl_float < ppl_ours < 1.5 * ppl_float
    again = qcore.load_quantized(saved, progress=False)
    prompt = tokenizer("The licence gives you the freedom to", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(prompt).logits, ours(prompt).logits)
        assert torch.equal(again(prompt[:, :1]).logits, ours(prompt[:, :1]).logits)
