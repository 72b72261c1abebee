"""AWQ checkpoints written by qcore load in transformers + gptqmodel (``tox -e awq-interop``).

transformers 5 reads AutoAWQ's GEMM format through gptqmodel's AWQ kernels; gptqmodel 7.5.0 is
the last release that runs on torch 2.13, installed without its dependencies (as in
``tox -e gptq-interop``) so torch stays the CPU build. On CPU transformers picks gptqmodel's
``TorchAtenAwqLinear``, which computes in float16: logits are compared with qcore's float32
ones within float16 rounding, and the greedy tokens must agree.
"""

import json
import os

import pytest
import torch

import qcore
from qcore.testdata import tiny_llama

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def awq_checkpoint(tmp_path, group_size: int):
    float_dir, out = tmp_path / "float", tmp_path / "awq"
    tiny_llama(hidden_size=128, intermediate_size=256).save_pretrained(float_dir)
    model = qcore.load_quantized(float_dir, progress=False)
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    qcore.quantize(model, qcore.config("awq", group_size=group_size), calibration=ids, progress=False)
    return qcore.save_quantized(model, out, overwrite=True)


@pytest.mark.parametrize("group_size", [64, 128])
def test_qcore_awq_checkpoint_loads_in_transformers(tmp_path, group_size):
    from transformers import AutoModelForCausalLM

    path = awq_checkpoint(tmp_path, group_size)
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "awq" and config["group_size"] == group_size
    hf = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float16).eval()
    converted = [n for n, m in hf.named_modules() if "Awq" in type(m).__name__]
    ours = qcore.load_quantized(path, progress=False)
    assert sorted(converted) == sorted(ours.qcore_modules), "transformers did not load every AWQ layer"
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = hf(ids).logits.float(), ours(ids).logits
    atol = 0.01 * mine.abs().max().item()
    torch.testing.assert_close(theirs, mine, rtol=0, atol=atol)
    # greedy tokens agree wherever qcore's top two logits are further apart than the two runs differ anywhere
    # (transformers computes in float16: a near-tie on a random tiny model may fall either way)
    top2 = mine.topk(2, dim=-1).values
    decided = (top2[..., 0] - top2[..., 1]) > 2 * (theirs - mine).abs().max()
    assert decided.float().mean() >= 0.5, "too few clear-cut positions for the comparison to mean anything"
    assert torch.equal(theirs.argmax(-1)[decided], mine.argmax(-1)[decided])
