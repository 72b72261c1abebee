"""Checkpoints whose metadata, tensors and config.json disagree: clear errors naming the layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import qcore
from qcore.errors import CheckpointError, TensorMismatchError

LAYER = "model.layers.0.self_attn.q_proj"


def rewrite(src: Path, dst: Path, edit_tensors=None, edit_metadata=None) -> Path:
    """Copy a transformers-written checkpoint, editing its tensors and/or its safetensors metadata."""
    shutil.copytree(src, dst)
    with safe_open(str(src / "model.safetensors"), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        metadata = dict(fh.metadata())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_metadata:
        edit_metadata(metadata)
    save_file(tensors, str(dst / "model.safetensors"), metadata=metadata)
    return dst


def edit_layer_json(key: str, change):
    def edit(metadata):
        data = json.loads(metadata[key])
        change(data)
        metadata[key] = json.dumps(data)
    return edit


def test_metadata_block_size_disagreeing_with_tensors(hf_checkpoints, tmp_path):
    def change(data):
        data["_data"]["block_size"] = [1, 32]
    path = rewrite(hf_checkpoints["torchao-int8wo"], tmp_path / "c", edit_metadata=edit_layer_json(f"{LAYER}.weight", change))
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.weight: the metadata says block_size=\[1, 32\]"):
        qcore.load_quantized(path, progress=False)


def test_metadata_naming_another_tensor_type(hf_checkpoints, tmp_path):
    def change(data):
        data["_type"] = "Float8Tensor"
    path = rewrite(hf_checkpoints["torchao-int8wo"], tmp_path / "c", edit_metadata=edit_layer_json(f"{LAYER}.weight", change))
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.weight: .*metadata says Float8Tensor.*Int8Tensor"):
        qcore.load_quantized(path, progress=False)


def test_metadata_listing_tensors_that_are_not_there(hf_checkpoints, tmp_path):
    def change(data):
        data["_tensor_data_names"] = ["qdata", "scale", "zero_point", "act_pre_scale"]
    path = rewrite(hf_checkpoints["torchao-int8wo"], tmp_path / "c", edit_metadata=edit_layer_json(f"{LAYER}.weight", change))
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.weight: the metadata lists tensors"):
        qcore.load_quantized(path, progress=False)


def test_metadata_that_is_not_json(hf_checkpoints, tmp_path):
    def edit(metadata):
        metadata[f"{LAYER}.weight"] = "{not json"
    path = rewrite(hf_checkpoints["torchao-int8wo"], tmp_path / "c", edit_metadata=edit)
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.weight: .*not valid JSON"):
        qcore.load_quantized(path, progress=False)


def test_metadata_without_an_entry_for_a_layer(hf_checkpoints, tmp_path):
    path = rewrite(hf_checkpoints["torchao-fp8wo"], tmp_path / "c", edit_metadata=lambda m: m.pop(f"{LAYER}.weight"))
    with pytest.raises(CheckpointError, match=rf"{LAYER}\.weight: the checkpoint's torchao metadata has no entry"):
        qcore.load_quantized(path, progress=False)


def test_scale_of_the_wrong_shape(hf_checkpoints, tmp_path):
    def edit(tensors):
        tensors[f"{LAYER}._weight_scale"] = tensors[f"{LAYER}._weight_scale"][:, :1].contiguous()
    path = rewrite(hf_checkpoints["torchao-intx4-g32"], tmp_path / "c", edit_tensors=edit)
    with pytest.raises(TensorMismatchError, match=rf"{LAYER}\._weight_scale is torch.float32 \[64, 1\].*\[64, 2\]"):
        qcore.load_quantized(path, progress=False)


def test_qdata_of_the_wrong_dtype(hf_checkpoints, tmp_path):
    def edit(tensors):
        tensors[f"{LAYER}._weight_qdata"] = tensors[f"{LAYER}._weight_qdata"].float()
    path = rewrite(hf_checkpoints["torchao-fp8wo"], tmp_path / "c", edit_tensors=edit)
    with pytest.raises(TensorMismatchError, match=rf"{LAYER}\._weight_qdata is torch.float32.*float8_e4m3fn"):
        qcore.load_quantized(path, progress=False)


def test_config_json_disagreeing_with_the_tensors(hf_checkpoints, tmp_path):
    """config.json says float8 but the tensors (and metadata) are int8."""
    path = tmp_path / "c"
    shutil.copytree(hf_checkpoints["torchao-int8wo"], path)
    config = json.loads((path / "config.json").read_text())
    fp8 = json.loads((hf_checkpoints["torchao-fp8wo"] / "config.json").read_text())
    config["quantization_config"] = fp8["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="metadata says Int8Tensor.*Float8Tensor"):
        qcore.load_quantized(path, progress=False)


def test_float_checkpoint_labelled_torchao(float_dir, hf_checkpoints, tmp_path):
    path = tmp_path / "c"
    shutil.copytree(float_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = json.loads((hf_checkpoints["torchao-int8wo"] / "config.json").read_text())["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.layers\.\d\.\w+\.\w+: a torchao checkpoint stores this layer as _weight_qdata"):
        qcore.load_quantized(path, progress=False)


def test_unreadable_version_in_a_checkpoint(hf_checkpoints, tmp_path):
    from qcore.errors import ConfigError

    path = tmp_path / "c"
    shutil.copytree(hf_checkpoints["torchao-int8wo"], path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["quant_type"]["default"]["_version"] = 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="Int8WeightOnlyConfig has _version 1.*reads version 2"):
        qcore.load_quantized(path, progress=False)


def test_stray_float_weight_beside_torchao_tensors(hf_checkpoints, tmp_path):
    import torch

    def edit(tensors):
        tensors[f"{LAYER}.weight"] = torch.zeros(64, 64)
    path = rewrite(hf_checkpoints["torchao-int8wo"], tmp_path / "c", edit_tensors=edit)
    with pytest.raises(CheckpointError, match=rf"{LAYER}: checkpoint holds \['weight'\] beside"):
        qcore.load_quantized(path, progress=False)
