"""Checkpoints: hqq's load in qcore with hqq's logits, qcore's load in hqq, config.json in transformers' layout."""

import contextlib
import io
import json

import pytest
import torch
from hqq_oracle import hqq_linear_from_tensors
from safetensors.torch import load_file

import qcore
from qcore.modules import get_module
from qcore.testdata import tiny_llama
from qcore_hqq.linear import HqqLinear

TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def hqq_quantized_tiny_llama(nbits: int, group_size: int, axis: int, bias: bool = False):
    """tiny llama quantized by hqq's own AutoHQQHFModel (float32 compute, CPU)."""
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    model = tiny_llama(seed=nbits, attention_bias=bias, mlp_bias=bias)
    model.config.architectures = ["LlamaForCausalLM"]  # as from_pretrained sets it; hqq writes config.json as is
    with contextlib.redirect_stdout(io.StringIO()):
        AutoHQQHFModel.quantize_model(model, BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis),
                                      compute_dtype=torch.float32, device="cpu")
    return model


@pytest.mark.parametrize("nbits,group_size,axis,bias", [(4, 64, 1, False), (3, 32, 1, True), (2, 16, 0, False), (8, 64, 1, False)])
def test_hqq_written_checkpoint_gives_hqqs_logits(tmp_path, monkeypatch, nbits, group_size, axis, bias):
    from hqq.models.hf.base import AutoHQQHFModel

    model = hqq_quantized_tiny_llama(nbits, group_size, axis, bias)
    with contextlib.redirect_stdout(io.StringIO()):
        AutoHQQHFModel.save_to_safetensors(model, str(tmp_path / "hqq"), verbose=False)
    assert "quantization_config" not in json.loads((tmp_path / "hqq" / "config.json").read_text())
    # hqq writes no quantization_config: say the method, the per-layer tensors carry the rest
    loaded = qcore.load_quantized(tmp_path / "hqq", quantization_config=qcore.config("hqq"), progress=False)
    assert len(loaded.qcore_modules) == 14
    with torch.no_grad():
        expected = model(TOKENS).logits
        fast = loaded(TOKENS).logits  # 4-bit layers on the bfloat16 int4 GEMM
        assert (fast - expected).norm() / expected.norm() < 1e-2
        monkeypatch.setattr(HqqLinear, "use_fast_kernels", False)  # the float32 reference: hqq's arithmetic
        torch.testing.assert_close(loaded(TOKENS).logits, expected, rtol=1e-5, atol=1e-5)


def test_qcore_checkpoint_loads_in_hqq(tmp_path, float_dir):
    model = qcore.load_quantized(float_dir, quantization_config=qcore.config("hqq", nbits=4, group_size=64),
                                 progress=False)
    path = qcore.save_quantized(model, tmp_path / "q")
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "hqq"
    assert config["quant_config"]["weight_quant_params"] == {"nbits": 4, "channel_wise": True, "group_size": 64,
                                                             "optimize": True, "round_zero": True, "axis": 1,
                                                             "view_as_float": False}
    tensors = load_file(str(path / "model.safetensors"))
    # rebuild the model in hqq: its HQQLinear from our tensors, everything else as saved
    hqq_model = tiny_llama(seed=99)
    plain = {k: v for k, v in tensors.items() if not any(k.startswith(m + ".") for m in model.qcore_modules)}
    hqq_model.load_state_dict(plain, strict=False)
    for name in model.qcore_modules:
        layer_tensors = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        layer = hqq_linear_from_tensors(layer_tensors)
        torch.testing.assert_close(layer.dequantize(), get_module(model, name).dequantized_weight(), rtol=0, atol=0)
        qcore.modules.replace_module(hqq_model, name, layer)
    HqqLinear.use_fast_kernels = False
    try:
        with torch.no_grad():
            torch.testing.assert_close(hqq_model(TOKENS).logits, model(TOKENS).logits, rtol=1e-5, atol=1e-5)
    finally:
        HqqLinear.use_fast_kernels = True


def test_the_float_head_decodes_on_the_float32_gemv(float_dir):
    """The head hqq leaves in float (skip_modules) runs the plugin's float32 GEMV for decode-sized inputs,
    still tied, with the float64 product's result."""
    from qcore.int4 import FloatDecodeLinear

    model = qcore.load_quantized(float_dir, quantization_config="hqq-4bit-g64", progress=False)
    head = model.lm_head
    assert type(head) is FloatDecodeLinear and "lm_head" not in model.qcore_modules
    if model.config.tie_word_embeddings:
        assert head.weight is model.model.embed_tokens.weight
    x = torch.randn(1, 1, head.in_features)
    with torch.no_grad():
        torch.testing.assert_close(head(x).double(), x.double() @ head.weight.double().T, rtol=1e-5, atol=1e-5)


def test_tensors_on_the_fly_equal_hqqs_own(tmp_path):
    """Quantizing a float checkpoint in qcore writes the tensors hqq writes for the same weights."""
    from hqq.models.hf.base import AutoHQQHFModel

    float_model = tiny_llama(seed=4)
    float_model.save_pretrained(tmp_path / "float")
    ours = qcore.load_quantized(tmp_path / "float", quantization_config="hqq-4bit-g64", progress=False)
    path = qcore.save_quantized(ours, tmp_path / "ours")
    hqq_model = hqq_quantized_tiny_llama(4, 64, 1)  # seed 4 as well
    with contextlib.redirect_stdout(io.StringIO()):
        AutoHQQHFModel.save_to_safetensors(hqq_model, str(tmp_path / "hqq"), verbose=False)
    mine, theirs = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "hqq" / "model.safetensors"))
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key


def test_bfloat16_model_stores_bfloat16_scales_like_hqq(tmp_path, float_dir):
    model = qcore.load_quantized(float_dir, quantization_config="hqq-4bit-g64", torch_dtype=torch.bfloat16,
                                 progress=False)
    path = qcore.save_quantized(model, tmp_path / "bf16")
    tensors = load_file(str(path / "model.safetensors"))
    name = next(iter(model.qcore_modules))
    assert tensors[f"{name}.scale"].dtype == torch.bfloat16
    assert "".join(map(chr, tensors[f"{name}.compute_dtype"].tolist())) == "torch.bfloat16"
    with torch.no_grad():
        assert model(TOKENS).logits.dtype == torch.bfloat16
    again = qcore.load_quantized(path, progress=False, torch_dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(again(TOKENS).logits, model(TOKENS).logits)
