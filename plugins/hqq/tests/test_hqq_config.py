"""The config reads and writes transformers' HqqConfig layout; flat keys, aliases and overrides."""

import json

import pytest
import torch

import qcore
from qcore.int4 import FloatDecodeLinear
from qcore.modules import get_module
from qcore.plugins import config_from_dict


def transformers_dict(**kwargs):
    from transformers import HqqConfig

    return json.loads(json.dumps(HqqConfig(**kwargs).to_dict()))


@pytest.mark.parametrize("kwargs", [{}, {"nbits": 3, "group_size": 32, "axis": 0}, {"nbits": 8, "skip_modules": ["lm_head", "down_proj"]}])
def test_transformers_dict_round_trips_unchanged(kwargs):
    data = transformers_dict(**kwargs)
    config = config_from_dict(data, strict=True)
    assert config.nbits == kwargs.get("nbits", 4) and config.axis == kwargs.get("axis", 1)
    assert json.loads(json.dumps(config.to_dict())) == data


def test_defaults_follow_hqqs_base_config():
    from hqq.core.quantize import BaseQuantizeConfig

    for nbits in (2, 3, 4, 8):
        ours = qcore.config("hqq", nbits=nbits, group_size=64).to_dict()["quant_config"]
        assert ours == json.loads(json.dumps(BaseQuantizeConfig(nbits=nbits, group_size=64, axis=1)))


def test_flat_keys_and_bits_alias():
    assert qcore.config("hqq", bits=2, group_size=16) == qcore.config("hqq", nbits=2, group_size=16)
    assert qcore.config("hqq", group_size=-1).group_size is None


def test_skip_modules_is_the_skip_list(float_dir):
    model = qcore.load_quantized(float_dir, quantization_config=qcore.config("hqq", skip_modules=["lm_head", "o_proj"]),
                                 progress=False)
    assert not any(name.endswith("o_proj") for name in model.qcore_modules)
    kept = get_module(model, "model.layers.0.self_attn.o_proj")
    assert type(kept) is FloatDecodeLinear and kept.weight.dtype == torch.float32  # float, on the float32 GEMV


def test_module_overrides_give_a_layer_its_own_nbits(tmp_path, float_dir):
    config = qcore.config("hqq", module_overrides={"down_proj": {"nbits": 8}})
    model = qcore.load_quantized(float_dir, quantization_config=config, progress=False)
    down = get_module(model, "model.layers.0.mlp.down_proj")
    up = get_module(model, "model.layers.0.mlp.up_proj")
    assert (down.meta.nbits, down.meta.round_zero) == (8, False)  # round_zero follows nbits, as in hqq
    assert (up.meta.nbits, up.meta.round_zero) == (4, True)
    path = qcore.save_quantized(model, tmp_path / "mixed")
    again = qcore.load_quantized(path, progress=False)
    assert get_module(again, "model.layers.0.mlp.down_proj").meta.nbits == 8
