"""save_quantized: shards, index, config.json, atomicity, no overwrite by accident."""

import json
import os
import signal
import stat
import subprocess
import sys

import pytest
import torch

import qcore
from qcore import saving
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
    with pytest.raises(TargetExistsError, match="not a checkpoint.*overwrite='force'"):
        qcore.save_quantized(quantized, target, overwrite=True)  # not a checkpoint: refused
    assert (target / "keep.txt").read_text() == "mine"
    qcore.save_quantized(quantized, target, overwrite="force")
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()
    qcore.save_quantized(quantized, target, overwrite=True)  # a checkpoint now: replaced
    assert (target / "model.safetensors").exists()


def test_a_failure_midway_leaves_nothing_behind(quantized, tmp_path, monkeypatch):
    target = tmp_path / "q"
    qcore.save_quantized(quantized, target)
    before = (target / "model.safetensors").read_bytes()
    calls = {"n": 0}
    real = saving.write_safetensors

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(saving, "write_safetensors", failing)
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


def test_new_directories_get_the_usual_permissions(quantized, tmp_path):
    """Not mkdtemp's 0700: what any new directory gets under the process's umask."""
    old = os.umask(0o022)
    try:
        path = qcore.save_quantized(quantized, tmp_path / "q")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755


def test_two_saves_racing_for_one_path_exactly_one_wins(quantized, float_dir, tmp_path, monkeypatch):
    """The existence check at the start is not enough: the second save appears just before the first renames."""
    target = tmp_path / "q"
    other = qcore.load_quantized(float_dir, progress=False)  # a different (float) checkpoint
    real_step = saving._step

    def another_save_finishes_first(name):
        if name == "before-rename" and not target.exists():
            monkeypatch.setattr(saving, "_step", real_step)
            qcore.save_quantized(other, target)

    monkeypatch.setattr(saving, "_step", another_save_finishes_first)
    with pytest.raises(TargetExistsError, match="created by someone else"):
        qcore.save_quantized(quantized, target)
    ckpt = Checkpoint(target)  # the winner is complete and untouched
    assert ckpt.quantization_config is None and "model.layers.0.mlp.up_proj.weight" in ckpt.tensors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


KILL_CODE = """
import os, signal, sys
import qcore
from qcore import saving

step, how = sys.argv[1], sys.argv[2]
model = qcore.load_quantized(sys.argv[3], "example-int8", progress=False)

def die(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGTERM)

saving._step = die
qcore.save_quantized(model, sys.argv[4], overwrite=True, max_shard_size="40KB")
print("finished")
"""


@pytest.mark.parametrize("step", ["shard-written", "before-rename", "after-exchange"])
@pytest.mark.parametrize("how", ["kill", "term"])
def test_a_crash_at_any_step_keeps_a_whole_checkpoint(float_dir, tmp_path, step, how):
    """SIGKILL/SIGTERM in the middle of an overwrite: the target holds the old or the new checkpoint, never neither."""
    target = tmp_path / "q"
    old = qcore.load_quantized(float_dir, progress=False)
    qcore.save_quantized(old, target)  # the old checkpoint: float, one shard
    result = subprocess.run([sys.executable, "-c", KILL_CODE, step, how, str(float_dir), str(target)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == (-signal.SIGKILL if how == "kill" else -signal.SIGTERM), result.stderr
    assert "finished" not in result.stdout
    ckpt = Checkpoint(target)  # whole: every header checked, the index (if any) consistent
    new = ckpt.quantization_config is not None
    assert new == (step == "after-exchange")  # the swap is the one moment the checkpoint changes
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "q"]
    if how == "term" and step != "after-exchange":
        assert leftovers == []  # SIGTERM unwinds and removes the temporary directory
    qcore.save_quantized(old, target, overwrite=True)  # a later save removes what a killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_safetensors_files_are_deterministic_and_read_by_the_safetensors_library(tmp_path):
    """The safetensors library writes __metadata__ in hash order (two saves differ); qcore's writer sorts it,
    so the same tensors and metadata give the same bytes whatever the dict order, and the library reads them."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from qcore.checkpoint import write_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(3, 5, generator=g), "q": torch.randint(0, 255, (7,), dtype=torch.uint8),
               "bf": torch.randn(4, generator=g).to(torch.bfloat16), "f8": torch.randn(2, 2, generator=g).to(torch.float8_e4m3fn),
               "flag": torch.tensor(True), "empty": torch.zeros(0, 3), "i64": torch.arange(5), "i32": torch.arange(3, dtype=torch.int32)}
    metadata = {f"key{i}": json.dumps({"i": i}) for i in range(12)} | {"format": "pt"}
    write_safetensors(tmp_path / "a.safetensors", tensors, metadata)
    write_safetensors(tmp_path / "b.safetensors", dict(reversed(tensors.items())), dict(reversed(metadata.items())))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    back = load_file(tmp_path / "a.safetensors")
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name].view(torch.uint8), tensor.view(torch.uint8)), name
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        assert f.metadata() == metadata
    from qcore.checkpoint import read_header

    entries, read_metadata = read_header(tmp_path / "a.safetensors")  # qcore's own strict reader accepts it too
    assert set(entries) == set(tensors) and read_metadata == metadata
