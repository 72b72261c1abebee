"""GPTQ checkpoints both ways between qcore and transformers + gptqmodel (``tox -e gptq-interop``).

Not part of the default ``tox`` run: gptqmodel is installed without its dependencies (7.5.0, the
last release that runs on torch 2.13; 7.7 needs torch >= 2.14.1, whose PyPI build is the CUDA one),
so this env is opt-in. Everything runs on CPU.

1. A checkpoint written by gptqmodel (SmolLM2-135M, 4-bit, group 128, sym, with and without
   act-order; gptqmodel's default group-aware reordering without act-order) loads in qcore: every
   layer dequantizes to what gptqmodel's own kernel uses, and the logits match transformers + gptqmodel.
2. A checkpoint written by qcore (plain order, group-aware reordering "GAR", act-order) loads in
   transformers + gptqmodel, with the same checks.
3. qcore's GAR column order is gptqmodel's own (``gptqmodel.quantization.gar``) on layers whose width
   is a multiple of the group size.

gptqmodel's torch kernel dequantizes in float16, so weights are compared with ours rounded to
float16 (equal bit for bit); logits within float16 weight rounding.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import qcore
from qcore.testdata import calibration_text, smollm2_checkpoint

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # gptqmodel's CPU pool needs 2 on a 2-core machine
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

PROMPT = "The GNU General Public License is a free, copyleft license for software and other kinds of works."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_checkpoint())


def load_in_transformers(path: Path):
    from transformers import AutoModelForCausalLM, GPTQConfig

    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    # gptqmodel's default CPU kernel refuses 576 inputs with group 128; its torch kernel takes them
    cfg = GPTQConfig(bits=qc["bits"], group_size=qc["group_size"], desc_act=qc["desc_act"], sym=qc["sym"], backend="torch")
    return AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32, quantization_config=cfg)


def compare(path: Path, tokenizer) -> None:
    hf = load_in_transformers(path)
    ours = qcore.load_quantized(path, progress=False)
    linears = [n for n, m in ours.named_modules() if type(m).__name__ == "GPTQQuantLinear"]
    assert len(linears) == 210
    for name in linears:
        theirs = hf.get_submodule(name).dequantize_weight().T.float()  # gptqmodel: (in, out), float16
        mine = ours.get_submodule(name).dequantized_weight(torch.float32)
        assert torch.equal(theirs, mine.half().float()), name
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = hf(ids).logits, ours(ids).logits
    assert (a.argmax(-1) == b.argmax(-1)).all()
    torch.testing.assert_close(b, a, rtol=0, atol=0.01 * a.abs().max().item())


@pytest.mark.parametrize("desc_act", [False, True])
def test_gptqmodel_checkpoint_loads_in_qcore(tmp_path, tokenizer, desc_act):
    from gptqmodel import GPTQModel, QuantizeConfig

    calib = [t for t in calibration_text().split("\n\n") if len(t) > 200][:16]
    model = GPTQModel.load(str(smollm2_checkpoint()), QuantizeConfig(bits=4, group_size=128, desc_act=desc_act, sym=True),
                           device="cpu")
    model.quantize(calib, batch_size=4)
    model.save(str(tmp_path))
    tokenizer.save_pretrained(tmp_path)
    compare(tmp_path, tokenizer)


@pytest.mark.parametrize(("desc_act", "act_group_aware"), [(False, False), (False, True), (True, False)],
                         ids=["plain", "gar", "act-order"])
def test_qcore_checkpoint_loads_in_transformers(tmp_path, tokenizer, desc_act, act_group_aware):
    float_model = qcore.load_quantized(smollm2_checkpoint(), progress=False)
    config = qcore.config("gptq", bits=4, group_size=128, desc_act=desc_act, sym=False, act_group_aware=act_group_aware)
    model = qcore.quantize(float_model, config, calibration=calibration_text(), tokenizer=tokenizer, nsamples=4, seqlen=256)
    qcore.save_quantized(model, tmp_path / "ckpt", tokenizer=tokenizer)
    written = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]
    assert written["act_group_aware"] is act_group_aware and written["desc_act"] is desc_act
    compare(tmp_path / "ckpt", tokenizer)


@pytest.mark.parametrize(("columns", "group_size"), [(1536, 128), (512, 64), (256, 32)])
def test_group_aware_order_is_gptqmodels(columns, group_size):
    from gptqmodel.quantization.gar import compose_final_perm, compute_global_perm, compute_local_perms

    from qcore_gptq.gptq import group_aware_order

    diag = torch.rand(columns, generator=torch.Generator().manual_seed(columns))
    local, values = compute_local_perms(diag, group_size, return_values=True)
    theirs = compose_final_perm(local, compute_global_perm(diag, group_size, precomputed_values=values), group_size)
    assert torch.equal(group_aware_order(diag, group_size), theirs)
