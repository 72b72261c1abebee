"""The config as transformers writes it, presets, the CLI, and config errors."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch
from safetensors.torch import load_file
from torchao_helpers import PRESETS, torchao_configs

import qcore
from qcore.cli import main as qcore_main
from qcore.errors import ConfigError
from qcore.plugins import preset_config


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_is_what_torchao_serializes(preset):
    from torchao.core.config import config_to_dict

    assert preset_config(preset).quant_type == {"default": config_to_dict(torchao_configs()[preset])}


@pytest.mark.parametrize("preset", PRESETS)
def test_to_dict_is_what_transformers_writes_and_reads(preset):
    from transformers import TorchAoConfig as HfTorchAoConfig

    ours = preset_config(preset).to_dict()
    theirs = HfTorchAoConfig(torchao_configs()[preset]).to_dict()
    assert {k: theirs[k] for k in ours} == ours
    assert set(theirs) - set(ours) <= {"quant_type_kwargs"}  # nothing else transformers writes is left out
    again = HfTorchAoConfig.from_dict(json.loads(json.dumps(ours)))
    assert type(again.quant_type) is type(torchao_configs()[preset])
    assert again.quant_type == torchao_configs()[preset]


def test_config_by_class_name_instance_or_serialized_form():
    from torchao.quantization import Int8WeightOnlyConfig

    by_name = qcore.config("torchao", quant_type="Int8WeightOnlyConfig")
    assert by_name == qcore.config("torchao", quant_type=Int8WeightOnlyConfig())
    assert by_name == qcore.config("torchao", quant_type=by_name.quant_type["default"])
    assert by_name == qcore.config("torchao", quant_type=by_name.quant_type)
    assert by_name.ao_config() == Int8WeightOnlyConfig()


def test_unknown_config_name_lists_what_works_here():
    with pytest.raises(ConfigError, match="Int8WeightOnlyConfig.*IntxWeightOnlyConfig") as err:
        qcore.config("torchao", quant_type="Int9WeightOnlyConfig")
    assert "Int9WeightOnlyConfig" in str(err.value) and "cpu" in str(err.value)


def test_missing_quant_type_is_an_error():
    with pytest.raises(ConfigError, match="needs quant_type"):
        qcore.config("torchao")


def test_unreadable_version_is_an_error():
    data = preset_config("torchao-int8wo").quant_type["default"]
    with pytest.raises(ConfigError, match="_version 7.*re-quantize"):
        qcore.config("torchao", quant_type={**data, "_version": 7})


def test_class_not_in_torchao_allow_list_is_refused():
    with pytest.raises(ConfigError, match="not a torchao config"):
        qcore.config("torchao", quant_type={"_type": "Popen", "_version": 1, "_data": {}})


def test_quant_type_with_other_keys_than_default_is_refused():
    with pytest.raises(ConfigError, match="'default'"):
        qcore.config("torchao", quant_type={"default": "Int8WeightOnlyConfig", "other": "Int8WeightOnlyConfig"})


def test_embedding_quantization_is_refused_clearly():
    with pytest.raises(ConfigError, match="include_input_output_embeddings"):
        qcore.config("torchao", quant_type="Int8WeightOnlyConfig", include_input_output_embeddings=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal; this machine has a CUDA GPU")
def test_cuda_only_config_names_the_device_it_needs(float_dir, tmp_path):
    config = qcore.config("torchao", quant_type="Float8DynamicActivationInt4WeightConfig")
    with pytest.raises(ConfigError, match="Float8DynamicActivationInt4WeightConfig needs a CUDA GPU.*Int8WeightOnlyConfig"):
        qcore.load_quantized(float_dir, quantization_config=config, progress=False)


def test_group_size_that_does_not_divide_a_layer_is_refused_before_loading(float_dir):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    config = qcore.config("torchao", quant_type=IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(48)))
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.\w+\.\w+_proj"):
        qcore.load_quantized(float_dir, quantization_config=config, progress=False)


@pytest.mark.parametrize(("installed", "message"), [(None, "not installed: pip install torchao==0.18.0"),
                                                    ("0.13.0", "torchao 0.13.0 is installed .* needs torchao >= 0.18.0")])
def test_torchao_missing_or_too_old(monkeypatch, installed, message):
    real = importlib.metadata.version

    def version(name):
        if name != "torchao":
            return real(name)
        if installed is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed

    from qcore_torchao.aoconfig import require_torchao

    monkeypatch.setattr(importlib.metadata, "version", version)
    require_torchao.cache_clear()
    try:
        with pytest.raises(ConfigError, match=message):
            qcore.config("torchao", quant_type="Int8WeightOnlyConfig")
    finally:
        require_torchao.cache_clear()


def test_cli_quantize_by_config_name(float_dir, hf_checkpoints, tmp_path, capsys):
    out = tmp_path / "cli"
    assert qcore_main(["quantize", str(float_dir), str(out), "--method", "torchao",
                       "--option", "quant_type=Int8WeightOnlyConfig"]) == 0
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(hf_checkpoints["torchao-int8wo"] / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_cli_quantize_with_a_preset(float_dir, hf_checkpoints, tmp_path):
    out = tmp_path / "cli"
    assert qcore_main(["quantize", str(float_dir), str(out), "--preset", "torchao-intx4-g32"]) == 0
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(hf_checkpoints["torchao-intx4-g32"] / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_cli_unknown_config_name_is_one_clear_line(float_dir, tmp_path, capsys):
    assert qcore_main(["quantize", str(float_dir), str(tmp_path / "x"), "--method", "torchao",
                       "--option", "quant_type=Int8WeightOnly"]) == 1
    err = capsys.readouterr().err
    assert "qcore: error: quant_type 'Int8WeightOnly' is not a torchao config" in err and "Int8WeightOnlyConfig" in err
    assert not (tmp_path / "x").exists()


def test_per_module_override_uses_another_torchao_config(float_dir, tmp_path):
    config = qcore.config("torchao", quant_type="Int8WeightOnlyConfig",
                          module_overrides={"down_proj": {"quant_type": "Float8WeightOnlyConfig"}})
    model = qcore.load_quantized(float_dir, quantization_config=config, progress=False)
    assert type(model.get_submodule("model.layers.0.mlp.down_proj").weight).__name__ == "Float8Tensor"
    assert type(model.get_submodule("model.layers.0.mlp.up_proj").weight).__name__ == "Int8Tensor"
    path = qcore.save_quantized(model, tmp_path / "mixed")
    again = qcore.load_quantized(path, progress=False)
    tokens = torch.arange(16).reshape(1, 16)
    with torch.no_grad():
        assert torch.equal(again(tokens).logits, model(tokens).logits)
