import json
import warnings

import pytest
from throwaway import TinyConfig

import qcore
from qcore.errors import ConfigError
from qcore.plugins import config_from_dict


def test_config_by_method_name():
    cfg = qcore.config("example_int8", modules_to_not_convert=["mlp"])
    assert cfg.quant_method == "example_int8" and cfg.modules_to_not_convert == ["mlp"]


def test_misspelled_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="'modules_to_not_convert'"):
        qcore.config("example_int8", modules_to_not_conver=["mlp"])


def test_invalid_value_is_rejected_by_validate():
    with pytest.raises(ConfigError, match="bits=8 only"):
        qcore.config("example_int8", bits=4)


def test_to_dict_is_hf_shaped_and_round_trips():
    cfg = TinyConfig(bits=4, modules_to_not_convert=["lm_head"])
    data = cfg.to_dict()
    assert list(data)[0] == "quant_method" and data["quant_method"] == "tiny"
    assert "module_overrides" not in data  # written only when used
    assert TinyConfig.from_dict(json.loads(json.dumps(data))) == cfg


def test_checkpoint_keys_other_tools_write_are_kept_and_written_back():
    data = {"quant_method": "tiny", "bits": 8, "tool_specific": {"x": 1}}
    with pytest.raises(ConfigError):
        TinyConfig.from_dict(data, strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = TinyConfig.from_dict(data, strict=False)
    assert any("tool_specific" in str(w.message) for w in caught)
    assert cfg.to_dict()["tool_specific"] == {"x": 1}


def test_module_overrides_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'bits'"):
        TinyConfig(module_overrides={"down_proj": {"bitz": 4}})
    TinyConfig(module_overrides={"down_proj": {"bits": 4}, "o_proj": {"skip": True}})


def test_quantization_config_without_method_is_an_error():
    with pytest.raises(ConfigError, match="quant_method"):
        config_from_dict({"bits": 4})


def test_wrong_method_for_class():
    with pytest.raises(ConfigError, match="serves quant_method 'tiny'"):
        TinyConfig.from_dict({"quant_method": "gptq"})


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="example-int8"):
        qcore.plugins.preset_config("example-int9")
