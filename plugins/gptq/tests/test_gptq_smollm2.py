"""GPTQ on the real SmolLM2-135M: better than round-to-nearest, and an exact save/load round trip.

Slow (the real model); 8 windows of 512 tokens keep it well under two minutes on two cores (the bench
and the CLI use more: see plugins/gptq/scripts/profile_calibration.py for the time per window)."""

import pytest
import torch

import qcore
from qcore.testdata import calibration_text, reference_text, smollm2_checkpoint

pytestmark = pytest.mark.slow  # the real SmolLM2-135M model


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoTokenizer

    path = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    eval_ids = tokenizer(reference_text(), return_tensors="pt").input_ids[:, :1024]
    return path, tokenizer, calibration_text(), eval_ids


def perplexity(model, ids):
    with torch.no_grad():
        losses = [model(ids[:, i:i + 256], labels=ids[:, i:i + 256]).loss for i in range(0, ids.shape[1], 256)]
    return float(torch.exp(torch.stack(losses).mean()))


def test_gptq_beats_rtn_and_round_trips(setup, tmp_path):
    path, tokenizer, calibration_text, eval_ids = setup
    config = qcore.config("gptq", bits=4, group_size=128)
    rtn = qcore.load_quantized(path, config, progress=False)
    model = qcore.quantize(qcore.load_quantized(path, progress=False), config, calibration=calibration_text,
                           tokenizer=tokenizer, nsamples=8, seqlen=512, progress=False)
    ppl_gptq, ppl_rtn = perplexity(model, eval_ids), perplexity(rtn, eval_ids)
    assert ppl_gptq < ppl_rtn, (ppl_gptq, ppl_rtn)
    saved = qcore.save_quantized(model, tmp_path / "gptq", tokenizer=tokenizer)
    again = qcore.load_quantized(saved, progress=False)
    with torch.no_grad():
        assert torch.equal(again(eval_ids[:, :64]).logits, model(eval_ids[:, :64]).logits)
