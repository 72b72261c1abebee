"""Checkpoints move between qcore and transformers + torchao (the oracle) with identical tensors and logits."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchao_helpers import PRESETS, hf_load, hf_quantize, torchao_configs

import qcore
from qcore_torchao.linear import TorchAoLinear


def file_metadata(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_transformers_checkpoint_loads_with_identical_logits(preset, hf_checkpoints, tokens):
    path = hf_checkpoints[preset]
    ours = qcore.load_quantized(path, progress=False)
    theirs = hf_load(path)
    assert ours.qcore_modules, "nothing was loaded as a torchao layer"
    for name in ours.qcore_modules:
        mine, ref = ours.get_submodule(name).weight, theirs.get_submodule(name).weight
        assert type(mine) is type(ref)
        for attr in ref.tensor_data_names:
            assert torch.equal(getattr(mine, attr), getattr(ref, attr)), f"{name}.{attr}"
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, theirs(tokens).logits)


@pytest.mark.parametrize("preset", PRESETS)
def test_quantizing_in_qcore_writes_the_tensors_transformers_writes(preset, float_dir, hf_checkpoints, tmp_path):
    model = qcore.load_quantized(float_dir, quantization_config=preset, progress=False)
    ours = all_tensors(qcore.save_quantized(model, tmp_path / "q"))
    theirs = all_tensors(hf_checkpoints[preset])
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    expected = json.loads((hf_checkpoints[preset] / "config.json").read_text())["quantization_config"]
    assert config == expected


@pytest.mark.parametrize("preset", PRESETS)
def test_qcore_checkpoint_with_torchao_metadata_loads_in_transformers(preset, float_dir, hf_checkpoints, tmp_path, tokens):
    """save_quantized writes torchao's metadata (the checkpoint_metadata hook): transformers + torchao read it."""
    model = qcore.load_quantized(float_dir, quantization_config=preset, progress=False)
    path = qcore.save_quantized(model, tmp_path / "q")
    ours, theirs = file_metadata(path / "model.safetensors"), file_metadata(hf_checkpoints[preset] / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert sorted(json.loads(ours.pop("tensor_names"))) == sorted(json.loads(theirs.pop("tensor_names")))
    assert {k: json.loads(v) if k != "format" else v for k, v in ours.items()} == {
        k: json.loads(v) if k != "format" else v for k, v in theirs.items()}
    loaded = hf_load(path)
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)
    again = qcore.load_quantized(path, progress=False)  # and qcore reads its metadata back
    with torch.no_grad():
        assert torch.equal(again(tokens).logits, model(tokens).logits)


def test_sharded_transformers_checkpoint_loads(float_dir, tmp_path, tokens):
    path = tmp_path / "sharded"
    theirs = hf_quantize(float_dir, torchao_configs()["torchao-intx4-g32"], path, max_shard_size="20KB")
    assert len(list(path.glob("*.safetensors"))) > 2
    ours = qcore.load_quantized(path, progress=False)
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, theirs(tokens).logits)


@pytest.mark.parametrize("preset", ["torchao-int8wo", "torchao-intx4-g32"])
def test_bfloat16_checkpoint_loads_in_bfloat16(preset, float_dir, tmp_path, tokens):
    path = tmp_path / "bf16"
    hf_quantize(float_dir, torchao_configs()[preset], path, dtype=torch.bfloat16)
    theirs = hf_load(path, dtype=torch.bfloat16)
    ours = qcore.load_quantized(path, torch_dtype=torch.bfloat16, progress=False)
    layer = ours.get_submodule("model.layers.0.mlp.up_proj")
    assert isinstance(layer, TorchAoLinear) and layer.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, theirs(tokens).logits)


@pytest.mark.parametrize("preset", PRESETS)
def test_on_the_fly_in_bfloat16_matches_transformers(preset, float_dir, tokens):
    from transformers import AutoModelForCausalLM, TorchAoConfig

    theirs = AutoModelForCausalLM.from_pretrained(
        float_dir, quantization_config=TorchAoConfig(torchao_configs()[preset]), dtype=torch.bfloat16).eval()
    ours = qcore.load_quantized(float_dir, quantization_config=preset, torch_dtype=torch.bfloat16, progress=False)
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, theirs(tokens).logits)


def test_quantizing_streams_one_layer_at_a_time(float_dir, monkeypatch):
    """Each layer is quantized when its tensors arrive, never the whole float model at once."""
    import qcore_torchao.quantize as quantize_module

    seen = []
    original = quantize_module._quantize_linear_weight

    def spy(weight, ao_config):
        if weight.device.type != "meta":
            seen.append(weight.shape)
        return original(weight, ao_config)

    monkeypatch.setattr(quantize_module, "_quantize_linear_weight", spy)
    model = qcore.load_quantized(float_dir, quantization_config="torchao-int8wo", progress=False)
    assert len(seen) == len(model.qcore_modules) == 14


def test_in_memory_quantize_matches_transformers(float_dir, hf_checkpoints, tmp_path):
    model = qcore.load_quantized(float_dir, progress=False)
    qcore.quantize(model, "torchao-intx4-g32")
    ours = all_tensors(qcore.save_quantized(model, tmp_path / "q"))
    theirs = all_tensors(hf_checkpoints["torchao-intx4-g32"])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_tied_output_head_is_quantized_from_the_embedding(tmp_path, tokens):
    from qcore.testdata import tiny_llama
    from qcore.testing import relative_error

    float_model = tiny_llama(tie_word_embeddings=True)
    float_model.save_pretrained(tmp_path / "float")
    config = qcore.config("torchao", quant_type="Int8WeightOnlyConfig", modules_to_not_convert=[])
    model = qcore.load_quantized(tmp_path / "float", quantization_config=config, progress=False)
    assert "lm_head" in model.qcore_modules
    assert type(model.lm_head.weight).__name__ == "Int8Tensor"
    assert type(model.model.embed_tokens.weight) is torch.nn.Parameter
    with torch.no_grad():
        assert relative_error(model(tokens).logits, float_model(tokens).logits) < 0.02
        again = qcore.load_quantized(qcore.save_quantized(model, tmp_path / "q"), progress=False)
        assert torch.equal(again(tokens).logits, model(tokens).logits)
