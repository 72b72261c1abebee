"""AWQ on the real SmolLM2-135M: better than round-to-nearest at the same group size, and an exact round trip."""

import pytest
import torch

import qcore
from qcore.testdata import calibration_text, reference_text, smollm2_checkpoint


def perplexity(model, ids):
    with torch.no_grad():
        losses = [model(ids[:, i:i + 256], labels=ids[:, i:i + 256]).loss for i in range(0, ids.shape[1], 256)]
    return float(torch.exp(torch.stack(losses).mean()))


@pytest.mark.slow
def test_awq_beats_rtn_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    path = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    eval_ids = tokenizer(reference_text(), return_tensors="pt").input_ids[:, :1024]
    config = qcore.config("awq", group_size=64)  # 576 inputs: 64 divides them, 128 does not
    rtn = qcore.load_quantized(path, config, progress=False)
    ppl_rtn = perplexity(rtn, eval_ids)
    del rtn
    model = qcore.quantize(qcore.load_quantized(path, progress=False), config, calibration=calibration_text(),
                           tokenizer=tokenizer, nsamples=8, seqlen=256, progress=False)
    ppl_awq = perplexity(model, eval_ids)
    assert ppl_awq < ppl_rtn, (ppl_awq, ppl_rtn)
    saved = qcore.save_quantized(model, tmp_path / "awq", tokenizer=tokenizer)
    again = qcore.load_quantized(saved, progress=False)
    with torch.no_grad():
        assert torch.equal(again(eval_ids[:, :64]).logits, model(eval_ids[:, :64]).logits)


@pytest.mark.slow
def test_group_size_128_names_a_layer_and_64():
    from qcore.errors import ConfigError

    with pytest.raises(ConfigError, match=r"in_features=576 is not a multiple of group_size=128; group sizes that fit every "
                                          r"layer: 32, 64"):
        qcore.load_quantized(smollm2_checkpoint(), qcore.config("awq", group_size=128), progress=False)
