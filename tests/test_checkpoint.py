"""Bad checkpoints: each gets a specific error that says what to do; nothing is unpickled."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from qcore.checkpoint import Checkpoint
from qcore.errors import CheckpointError, CorruptCheckpointError, MissingShardError


def write(path, tensors):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def patch_header(path, edit):
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


@pytest.fixture
def ckpt_dir(tmp_path):
    write(tmp_path / "model.safetensors", {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.int8)})
    return tmp_path


def test_reads_tensors_lazily_and_exactly(ckpt_dir):
    ckpt = Checkpoint(ckpt_dir)
    assert ckpt.tensors["a"].shape == (2, 3) and ckpt.tensors["b"].dtype == "I8"
    got = dict(ckpt.iter_tensors())
    assert torch.equal(got["a"], torch.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("keep", [0, 5, 12])
def test_truncated_file(ckpt_dir, keep):
    path = ckpt_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep < 8 else data[: len(data) - keep])
    with pytest.raises(CorruptCheckpointError, match="truncated|claims"):
        Checkpoint(ckpt_dir)


def test_header_not_json(ckpt_dir):
    path = ckpt_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8] = ord("!")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        Checkpoint(ckpt_dir)


def test_offsets_disagree_with_shape(ckpt_dir):
    patch_header(ckpt_dir / "model.safetensors", lambda h: h["a"].update(shape=[3, 3]))
    with pytest.raises(CorruptCheckpointError, match="needs 36 bytes"):
        Checkpoint(ckpt_dir)


def test_overlapping_tensors(ckpt_dir):
    def overlap(h):
        h["b"]["data_offsets"] = [20, 24]

    patch_header(ckpt_dir / "model.safetensors", overlap)
    with pytest.raises(CorruptCheckpointError, match="overlap"):
        Checkpoint(ckpt_dir)


def test_unknown_dtype(ckpt_dir):
    patch_header(ckpt_dir / "model.safetensors", lambda h: h["a"].update(dtype="F12"))
    with pytest.raises(CorruptCheckpointError, match="unknown dtype"):
        Checkpoint(ckpt_dir)


def test_missing_shard_named_in_index(tmp_path):
    write(tmp_path / "model-00001-of-00002.safetensors", {"a": torch.zeros(2)})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MissingShardError, match="model-00002-of-00002"):
        Checkpoint(tmp_path)


def test_index_disagreeing_with_shards(tmp_path):
    write(tmp_path / "s1.safetensors", {"a": torch.zeros(2)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "z": "s1.safetensors"}}))
    with pytest.raises(CorruptCheckpointError, match="'z'"):
        Checkpoint(tmp_path)


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    # A pickle that would create a file if it were ever unpickled.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (tmp_path / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(CheckpointError, match="never unpickles"):
        Checkpoint(tmp_path)
    assert not marker.exists()


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "nope")
