"""save_quantized: shards, index, config.json, atomicity, no overwrite by accident."""

import json

import pytest
import torch

import qcore
from qcore.checkpoint import Checkpoint
from qcore.errors import TargetExistsError
from qcore.saving import parse_size


@pytest.fixture
def quantized(float_dir):
    return qcore.load_quantized(float_dir, "example-int8", progress=False)


def test_layout_and_config(quantized, tmp_path):
    path = qcore.save_quantized(quantized, tmp_path / "q", max_shard_size="40KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((path / s).exists() for s in shards)
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    ckpt = Checkpoint(path)
    assert index["metadata"]["total_size"] == ckpt.total_bytes()
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"] == quantized.qcore_config.to_dict()
    assert config["model_type"] == "llama"


def test_refuses_an_existing_target_and_keeps_it(quantized, tmp_path):
    target = tmp_path / "q"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(TargetExistsError, match="overwrite=True"):
        qcore.save_quantized(quantized, target)
    assert (target / "keep.txt").read_text() == "mine"
    qcore.save_quantized(quantized, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()


def test_a_failure_midway_leaves_nothing_behind(quantized, tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "q"
    qcore.save_quantized(quantized, target)
    before = (target / "model.safetensors").read_bytes()
    calls = {"n": 0}
    real = safetensors.torch.save_file

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        qcore.save_quantized(quantized, target, overwrite=True, max_shard_size="40KB")
    assert (target / "model.safetensors").read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no temporary directory left


def test_tied_weights_are_written_once(tmp_path):
    from qcore.testdata import tiny_llama

    model = tiny_llama(tie_word_embeddings=True)
    qcore.quantize(model, qcore.config("example_int8"))
    path = qcore.save_quantized(model, tmp_path / "q")
    names = Checkpoint(path).tensors
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    again = qcore.load_quantized(path, progress=False)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize(("text", "expected"), [(1000, 1000), ("5GB", 5 * 10**9), ("500MiB", 500 * 2**20), ("1.5KB", 1500)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(ValueError, match="5GB"):
        parse_size("lots")


def test_unquantized_model_saves_as_float(float_dir, tmp_path, tokens):
    model = qcore.load_quantized(float_dir, progress=False)
    path = qcore.save_quantized(model, tmp_path / "f")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    with torch.no_grad():
        assert torch.equal(qcore.load_quantized(path, progress=False)(tokens).logits, model(tokens).logits)
