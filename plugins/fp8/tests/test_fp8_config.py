"""The config against transformers' FineGrainedFP8Config (the oracle): same keys, same defaults, both directions."""

import json

import pytest
import torch
from transformers import FineGrainedFP8Config

import qcore
from qcore.errors import ConfigError
from qcore_fp8.config import Fp8Config


def transformers_dict(**kwargs) -> dict:
    return json.loads(FineGrainedFP8Config(**kwargs).to_json_string())


@pytest.mark.parametrize("kwargs", [
    {},
    {"weight_block_size": None},
    {"weight_block_size": [64, 32], "scale_fmt": "ue8m0"},
    {"activation_scheme": "static", "modules_to_not_convert": ["gate", "lm_head"], "expert_dtype": "fp4"},
])
def test_transformers_config_reads_and_writes_back_unchanged(kwargs):
    data = transformers_dict(**kwargs)
    ours = qcore.config("fp8", **{k: v for k, v in data.items() if k != "quant_method"})
    assert json.loads(json.dumps(ours.to_dict())) == data
    # and what qcore writes, transformers reads back to the same config
    again = FineGrainedFP8Config.from_dict(ours.to_dict())
    assert json.loads(again.to_json_string()) == data


def test_defaults_are_transformers_defaults():
    assert json.loads(json.dumps(qcore.config("fp8").to_dict())) == transformers_dict()


def test_ignored_layers_is_an_alias_of_modules_to_not_convert():
    config = Fp8Config.from_dict({"quant_method": "fp8", "ignored_layers": ["mlp.gate", "lm_head"]})
    assert config.modules_to_not_convert == ["mlp.gate", "lm_head"]
    assert FineGrainedFP8Config(ignored_layers=["mlp.gate", "lm_head"]).modules_to_not_convert == ["mlp.gate", "lm_head"]
    # an explicit modules_to_not_convert wins, as in transformers
    both = Fp8Config.from_dict({"quant_method": "fp8", "ignored_layers": ["a"], "modules_to_not_convert": ["b"]})
    assert both.modules_to_not_convert == ["b"]
    assert "ignored_layers" not in qcore.config("fp8").to_dict()


def test_ignored_layers_keeps_those_layers_in_float(tmp_path):
    from qcore.int4 import FloatDecodeLinear
    from qcore.testdata import tiny_llama
    from qcore_fp8.linear import Fp8Linear

    tiny_llama().save_pretrained(tmp_path)
    model = qcore.load_quantized(tmp_path, {"quant_method": "fp8", "ignored_layers": ["down_proj", "lm_head"]}, progress=False)
    kept = model.model.layers[0].mlp.down_proj
    assert type(kept) is FloatDecodeLinear and kept.weight.dtype == torch.float32  # float, on the float32 GEMV
    assert isinstance(model.model.layers[0].mlp.up_proj, Fp8Linear)


def test_activation_scheme_is_case_insensitive_like_transformers():
    assert qcore.config("fp8", activation_scheme="Dynamic").activation_scheme == "dynamic"


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"activation_scheme": "per-token"}, "activation_scheme"),
    ({"weight_block_size": [128]}, "weight_block_size"),
    ({"weight_block_size": [0, 128]}, "weight_block_size"),
    ({"weight_block_size": [128.0, 128]}, "weight_block_size"),
    ({"weight_block_size": [True, 128]}, "weight_block_size"),
    ({"weight_block_size": "128"}, "weight_block_size"),
    ({"scale_fmt": "e5m2"}, "scale_fmt"),
    ({"expert_dtype": "int4"}, "expert_dtype"),
    ({"dequantize": "yes"}, "dequantize"),
    ({"modules_to_not_convert": "lm_head"}, "modules_to_not_convert"),
    ({"ignored_layers": [1, 2]}, "ignored_layers"),
    ({"weight_block_size": None, "scale_fmt": "ue8m0"}, "scale_fmt"),
])
def test_bad_values_are_config_errors_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        qcore.config("fp8", **kwargs)


def test_misspelled_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="weight_block_size"):
        qcore.config("fp8", weight_blocksize=[128, 128])


def test_dequantize_true_is_refused_with_advice(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"qcore\.dequantize"):
        qcore.load_quantized(tmp_path, qcore.config("fp8", dequantize=True), progress=False)


def test_static_activations_cannot_be_quantized_on_the_fly(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="dynamic"):
        qcore.load_quantized(tmp_path, qcore.config("fp8", activation_scheme="static"), progress=False)


def test_fp8_embeddings_are_refused(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="modules_to_convert"):
        qcore.load_quantized(tmp_path, qcore.config("fp8", modules_to_convert=["embed_tokens"]), progress=False)
