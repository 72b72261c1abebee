"""Bad configs and checkpoints: clear errors naming the key or the module."""

import json

import pytest
import torch

import qcore
from qcore.errors import CheckpointError, ConfigError, TensorMismatchError
from qcore.testing import rewrite_checkpoint

MODULE = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def hqq_checkpoint(tmp_path_factory, float_dir):
    model = qcore.load_quantized(float_dir, quantization_config="hqq-4bit-g64", progress=False)
    return qcore.save_quantized(model, tmp_path_factory.mktemp("bad") / "q")


def text(value: str) -> torch.Tensor:
    return torch.tensor([ord(c) for c in value], dtype=torch.uint8)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.__setitem__(f"{MODULE}.W_q", t[f"{MODULE}.W_q"][:-1]), r"W_q is torch.uint8 \[31, 64\].*needs"),
    (lambda t: t.__setitem__(f"{MODULE}.nbits", torch.tensor(2, dtype=torch.int32)), "nbits=2 does not go with packing"),
    (lambda t: t.__setitem__(f"{MODULE}.packing", text("5bit_u8")), "unknown hqq packing '5bit_u8'"),
    (lambda t: t.__setitem__(f"{MODULE}.axis", torch.tensor(2, dtype=torch.int32)), "axis=2"),
    (lambda t: t.__setitem__(f"{MODULE}.group_size", torch.tensor(48, dtype=torch.int32)), "group_size 48 does not divide"),
    (lambda t: t.__setitem__(f"{MODULE}.scale", t[f"{MODULE}.scale"][:-1]), "scale is"),
    (lambda t: t.__setitem__(f"{MODULE}.quant_zero", torch.tensor(1, dtype=torch.uint8)), "quant_zero=1"),
    (lambda t: t.pop(f"{MODULE}.zero"), r"lacks \['zero'\]"),
])
def test_bad_layer_tensors_name_the_module(tmp_path, hqq_checkpoint, edit, match):
    broken = rewrite_checkpoint(hqq_checkpoint, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError, match=match) as info:
        qcore.load_quantized(broken, progress=False)
    assert MODULE in str(info.value)


def test_shape_of_another_model_is_a_mismatch(tmp_path, hqq_checkpoint):
    broken = rewrite_checkpoint(hqq_checkpoint, tmp_path / "shape",
                                lambda t: t.__setitem__(f"{MODULE}.shape", torch.tensor([64, 32])))
    with pytest.raises(TensorMismatchError, match=MODULE):
        qcore.load_quantized(broken, progress=False)


def test_group_size_that_does_not_divide_the_layer_names_it(float_dir):
    # 64 * 64 values: 4096 is not a multiple of 48... only a multiple-of-8 group size can be asked for
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.self_attn\.q_proj: group_size 40 does not divide"):
        qcore.load_quantized(float_dir, quantization_config=qcore.config("hqq", group_size=40), progress=False)


@pytest.mark.parametrize("kwargs,key", [
    ({"nbits": 5}, "nbits"), ({"group_size": 12}, "group_size"), ({"axis": 2}, "axis"),
    ({"optimize": "yes"}, "optimize"), ({"scale_quant_params": {"nbits": 8}}, "scale_quant_params"),
    ({"offload_meta": True}, "offload_meta"), ({"skip_modules": "lm_head"}, "skip_modules"),
    ({"bits": 4, "nbits": 8}, "bits=4 and nbits=8"),
])
def test_bad_config_values_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        qcore.config("hqq", **kwargs)


def test_bad_nested_config_names_the_key():
    with pytest.raises(ConfigError, match="nbitz"):
        qcore.config("hqq", quant_config={"weight_quant_params": {"nbitz": 4}})
    with pytest.raises(ConfigError, match="dynamic_config"):
        qcore.config("hqq", quant_config={"self_attn.q_proj": {"weight_quant_params": {"nbits": 4}}})


def test_hqq_pickled_checkpoint_is_refused_without_unpickling(tmp_path):
    """hqq's save_quantized writes qmodel.pt (a pickle): refused before any byte of it is read."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (tmp_path / "qmodel.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR.")  # would run a command if unpickled
    with pytest.raises(CheckpointError, match=r"qmodel\.pt.*never unpickles.*save_to_safetensors"):
        qcore.load_quantized(tmp_path, quantization_config=qcore.config("hqq"), progress=False)
    assert not (tmp_path / "pwned").exists()
