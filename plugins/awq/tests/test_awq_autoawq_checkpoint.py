"""Checkpoints AutoAWQ 0.2.9 writes (on CPU, in the test) load in qcore and save back byte for byte."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_awq_format import decode_gemm, decode_gemv

import qcore
from qcore.modules import get_module
from qcore_awq.linear import AWQLinear

pytest.importorskip("awq", reason="the AutoAWQ oracle (autoawq==0.2.9) is not installed")

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
           "mlp.down_proj")


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    from qcore.testdata import tiny_llama

    path = tmp_path_factory.mktemp("autoawq") / "float"
    tiny_llama(num_key_value_heads=4, attention_bias=True, seed=5).save_pretrained(path)  # biases: AutoAWQ stores them fp16
    return path


@pytest.fixture(scope="module", params=["gemm", "gemv"])
def autoawq_dir(request, float_dir, tmp_path_factory):
    from awq import AutoAWQForCausalLM

    model = AutoAWQForCausalLM.from_pretrained(str(float_dir), dtype=torch.float32)
    ids = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    model.quantize(None, quant_config={"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": request.param.upper()},
                   calib_data=ids.tolist(), max_calib_seq_len=64)
    path = tmp_path_factory.mktemp(f"autoawq-{request.param}") / "q"
    model.save_quantized(str(path))
    return path, request.param


def reference_model(float_dir, tensors, version):
    """The float model with every AWQ linear replaced by its weight decoded from the file (the exact reference)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(float_dir, dtype=torch.float32).eval()
    for index, layer in enumerate(model.model.layers):
        for name in LINEARS:
            prefix = f"model.layers.{index}.{name}"
            linear = get_module(layer, name)
            if version == "gemm":
                weight = decode_gemm(tensors, prefix, linear.in_features)
            else:
                weight = decode_gemv(tensors, prefix, linear.in_features, 32)
            linear.weight.data = weight
            if linear.bias is not None:
                linear.bias.data = tensors[f"{prefix}.bias"].float()
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        get_module(model, name.rsplit(".", 1)[0]).weight.data = tensors[name].float()
    for index, layer in enumerate(model.model.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):  # AutoAWQ folded its scales into them
            get_module(layer, norm).weight.data = tensors[f"model.layers.{index}.{norm}.weight"].float()
    return model


def test_autoawq_checkpoint_loads_with_the_exact_dequantized_logits(autoawq_dir, float_dir):
    path, version = autoawq_dir
    assert json.loads((path / "config.json").read_text())["quantization_config"]["version"] == version
    tensors = load_file(str(path / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.q_proj.bias"].dtype == torch.float16
    model = qcore.load_quantized(path, progress=False)
    reference = reference_model(float_dir, tensors, version)
    for index, layer in enumerate(reference.model.layers):
        for name in LINEARS:
            ours = get_module(model, f"model.layers.{index}.{name}")
            assert torch.equal(ours.dequantized_weight(), get_module(layer, name).weight), name
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(ids).logits, model(ids).logits
    # the int4 CPU kernel computes s*(q-8) + s*(8-z) where the reference computes s*(q-z): rounding only
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    for module in model.modules():
        if isinstance(module, AWQLinear):
            module.drop_fast_path()  # the reference kernel computes what the reference model's nn.Linear does
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)


def test_autoawq_checkpoint_saves_back_byte_for_byte(autoawq_dir, tmp_path):
    path, version = autoawq_dir
    model = qcore.load_quantized(path, progress=False)
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 8)))
    again = qcore.save_quantized(model, tmp_path / "again")
    original, saved = load_file(str(path / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert original.keys() == saved.keys()
    for name, tensor in original.items():
        assert saved[name].dtype == tensor.dtype and torch.equal(saved[name], tensor), name
    config = json.loads((again / "config.json").read_text())["quantization_config"]
    assert config["version"] == version and config["group_size"] == 32
