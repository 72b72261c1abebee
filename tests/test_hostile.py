"""A corpus of hostile and careless inputs, generated here (no checked-in binaries).

Each case must end in a qcore error that names the offending file, tensor or key (never a bare
TypeError/AttributeError/IndexError, a hang, a crash, or silently wrong numbers) or in the
documented correct behaviour.
"""

import json
import os
import signal
import struct
import sys
from contextlib import contextmanager

import pytest
import torch
from core_helpers import make_dist, run_python
from safetensors.torch import save_file

import qcore
from qcore.checkpoint import INDEX_NAME, Checkpoint
from qcore.cli import main as cli
from qcore.errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    MissingShardError,
    NonFiniteWeightError,
    QcoreError,
)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks forever)."""
    def fail(*_):
        raise AssertionError(f"hung for {seconds}s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def sharded(tmp_path, weight_map, shards=("a.safetensors",)):
    for shard in shards:
        save_file({"x": torch.ones(2)}, str(tmp_path / shard))
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    return tmp_path


def raw_safetensors(path, header: bytes, data: bytes = b"\0" * 16):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


# --- files -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("weight_map", "match"),
    [
        ({"x": 3}, "maps tensor 'x' to 3"),
        ({"x": ""}, "maps tensor 'x' to ''"),
        ({"x": ["a.safetensors"]}, "maps tensor 'x'"),
        ({"x": "../outside.safetensors"}, "no paths"),
        ({"x": "/etc/passwd"}, "no paths"),
        ({"x": "sub/a.safetensors"}, "no paths"),
    ],
)
def test_index_weight_map_values_are_checked_before_any_open(tmp_path, weight_map, match):
    (tmp_path / "ckpt").mkdir()
    os.mkfifo(tmp_path / "outside.safetensors")  # opening it would hang: the refusal must come first
    with deadline(20), pytest.raises(CorruptCheckpointError, match=match):
        Checkpoint(sharded(tmp_path / "ckpt", weight_map))


@pytest.mark.parametrize("index", ["[1, 2]", '"text"', "{\"weight_map\": [1]}", "[" * 100000 + "]" * 100000])
def test_index_that_is_not_an_object(tmp_path, index):
    (tmp_path / INDEX_NAME).write_text(index)
    with pytest.raises(CorruptCheckpointError, match=INDEX_NAME.replace(".", r"\.")):
        Checkpoint(tmp_path)


def test_shard_that_is_a_directory(tmp_path):
    (tmp_path / "a.safetensors").mkdir()
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": {"x": "a.safetensors"}}))
    with pytest.raises(CheckpointError, match="a.safetensors is a directory"):
        Checkpoint(tmp_path)


def test_shard_that_is_a_fifo_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")
    with deadline(20), pytest.raises(CheckpointError, match="model.safetensors is a FIFO"):
        Checkpoint(tmp_path)


def test_dangling_symlink_is_named(tmp_path):
    (tmp_path / "model.safetensors").symlink_to(tmp_path / "blobs" / "gone")
    with pytest.raises(MissingShardError, match="symlink to .*gone.*does not exist"):
        Checkpoint(tmp_path)


def test_symlink_into_a_hub_cache_blob_works(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    save_file({"x": torch.arange(4.0)}, str(blobs / "0123abcd"))
    snapshot = tmp_path / "snapshots" / "main"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to("../../blobs/0123abcd")
    assert torch.equal(dict(Checkpoint(snapshot).iter_tensors())["x"], torch.arange(4.0))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}, "unknown dtype"),
        ({"dtype": 7, "shape": [4], "data_offsets": [0, 16]}, "unknown dtype"),
        ({"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}, "bad shape"),
        ({"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}, "bad shape"),
        ({"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}, "bad shape"),
        ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "bad shape"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.0]}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0]}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [4], "data_offsets": "0,16"}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "bad data_offsets"),
        ("not an entry", "not an object"),
    ],
)
def test_header_fields_of_the_wrong_json_type(tmp_path, entry, match):
    raw_safetensors(tmp_path / "model.safetensors", json.dumps({"w": entry}).encode())
    with pytest.raises(CorruptCheckpointError, match=f"model.safetensors.*'w'.*{match}|model.safetensors.*{match}"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("metadata", [["format", "pt"], {"format": 1}, "pt"])
def test_header_metadata_of_the_wrong_type(tmp_path, metadata):
    header = {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    raw_safetensors(tmp_path / "model.safetensors", json.dumps(header).encode())
    with pytest.raises(CorruptCheckpointError, match="__metadata__"):
        Checkpoint(tmp_path)


def test_deeply_nested_header(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", b'{"w": ' + b"[" * 200000 + b"]" * 200000 + b"}")
    with pytest.raises(CorruptCheckpointError, match="nested too deeply"):
        Checkpoint(tmp_path)


def test_huge_header_is_refused_quickly(tmp_path):
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", 1 << 40))
        fh.truncate(300 * 2**20)  # sparse: a 300 MB file that costs nothing
    with deadline(10), pytest.raises(CorruptCheckpointError, match="more than qcore's limit"):
        Checkpoint(tmp_path)


def test_huge_index_is_refused_quickly(tmp_path):
    with open(tmp_path / INDEX_NAME, "wb") as fh:
        fh.truncate(100 * 2**20)
    with deadline(10), pytest.raises(CorruptCheckpointError, match="over qcore's .*limit"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("config", ["[1, 2]", "3", '"llama"', "[" * 100000 + "]" * 100000])
def test_config_json_that_is_not_an_object(tmp_path, config):
    save_file({"x": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CorruptCheckpointError, match="config.json"):
        Checkpoint(tmp_path)


def test_quantization_config_that_is_not_an_object(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": "gptq"}))
    with pytest.raises(CorruptCheckpointError, match="quantization_config must be an object"):
        qcore.load_quantized(tmp_path)


# --- remote code -------------------------------------------------------------------------
def test_a_checkpoint_never_runs_its_own_code(float_dir, tmp_path):
    """auto_map in config.json: refused without prompting, and the shipped .py never runs."""
    import shutil

    ckpt = tmp_path / "evil"
    shutil.copytree(float_dir, ckpt)
    marker = tmp_path / "ran"
    (ckpt / "evil_config.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil_config.EvilConfig", "AutoModelForCausalLM": "evil_config.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(config))
    code = f"""
import sys, qcore
from qcore.errors import QcoreError
try:
    qcore.load_quantized({str(ckpt)!r}, progress=False)
except QcoreError as exc:
    print("refused:", exc)
"""
    result = run_python(code, stdin="y\ny\ny\n")
    assert "refused:" in result.stdout and "trust_remote_code=True" in result.stdout, result.stderr
    assert not marker.exists()
    cli_result = run_python(
        f"import sys; from qcore.cli import main; sys.exit(main(['quantize', {str(ckpt)!r}, {str(tmp_path / 'out')!r}, "
        "'--preset', 'example-int8']))", stdin="y\ny\ny\n",
    )
    assert cli_result.returncode == 1 and "--trust-remote-code" in cli_result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


# --- config values ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"bits": 8.0}, "bits"),
        ({"bits": "8"}, "bits"),
        ({"bits": True}, "bits"),
        ({"modules_to_not_convert": "lm_head"}, "modules_to_not_convert"),
        ({"modules_to_not_convert": [3]}, "modules_to_not_convert"),
        ({"modules_to_not_convert": ["(unclosed"]}, "modules_to_not_convert"),
        ({"module_overrides": ["down_proj"]}, "module_overrides"),
        ({"module_overrides": {"re:(": {"bits": 8}}}, "module_overrides"),
        ({"module_overrides": {"down_proj": "skip"}}, "module_overrides"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        qcore.config("example_int8", **kwargs)


@pytest.mark.parametrize("method", [None, "", 3, ["gptq"]])
def test_config_without_a_method_name(method):
    with pytest.raises(ConfigError, match="quant_method"):
        qcore.config(method)
    with pytest.raises(ConfigError, match="quant_method"):
        qcore.load_quantized  # noqa: B018 - resolve the lazy attribute first
        from qcore.plugins import config_from_dict

        config_from_dict({"quant_method": method})


def test_checkpoint_with_a_null_method(float_dir, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "null"
    shutil.copytree(float_dir, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": None}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="quant_method"):
        qcore.load_quantized(ckpt, progress=False)
    assert cli(["inspect", str(ckpt)]) == 1
    assert "quant_method" in capsys.readouterr().err


def test_a_config_that_is_not_a_config():
    with pytest.raises(ConfigError, match="QuantizationConfig"):
        qcore.quantize(torch.nn.Linear(2, 2), 42)


# --- non-finite weights -------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named_not_quantized(float_dir, tmp_path, bad):
    import shutil

    from safetensors.torch import load_file

    ckpt = tmp_path / "nan"
    shutil.copytree(float_dir, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = bad
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeightError, match=r"model\.layers\.1\.mlp\.up_proj\.weight holds 1 NaN/Inf.*modules_to_not_convert"):
        qcore.load_quantized(ckpt, "example-int8", progress=False)
    model = qcore.load_quantized(ckpt, progress=False)
    with pytest.raises(NonFiniteWeightError, match=r"up_proj\.weight"):
        qcore.quantize(model, "example-int8")
    skipped = qcore.load_quantized(ckpt, qcore.config("example_int8", modules_to_not_convert=["lm_head", "up_proj"]),
                                   progress=False)
    assert "model.layers.1.mlp.up_proj" not in skipped.qcore_modules


# --- calibration and CLI values ---------------------------------------------------------
@pytest.mark.parametrize(("nsamples", "seqlen"), [(0, 8), (-1, 8), (2, 0), (2, -5)])
def test_calibration_window_counts(float_dir, nsamples, seqlen):
    from qcore.calibration import calibrate

    model = qcore.load_quantized(float_dir, progress=False)
    config = qcore.config("example_int8")
    with pytest.raises(CalibrationError, match="nsamples|seqlen"):
        calibrate(model, config, torch.zeros(2, 8, dtype=torch.long), nsamples=nsamples, seqlen=seqlen)


def test_non_utf8_calibration_file(tmp_path):
    from qcore.calibration import calibration_windows

    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(CalibrationError, match="latin1.txt is not UTF-8"):
        calibration_windows(path, tokenizer=object(), nsamples=2, seqlen=8)


def test_eval_window_zero_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["eval", "somewhere", "--text", "t.txt", "--window", "0"])
    assert exit_info.value.code == 2 and "--window" in capsys.readouterr().err


def test_bad_shard_size_is_refused_before_any_work(float_dir, tmp_path, capsys):
    assert cli(["quantize", str(float_dir), str(tmp_path / "out"), "--preset", "example-int8", "--max-shard-size", "big"]) == 1
    assert "max_shard_size 'big'" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="max_shard_size"):
        qcore.save_quantized(torch.nn.Linear(2, 2), tmp_path / "out2", max_shard_size=-5)


def test_overwrite_refuses_a_directory_that_is_no_checkpoint(float_dir, tmp_path, capsys):
    target = tmp_path / "home"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    assert cli(["quantize", str(float_dir), str(target), "--preset", "example-int8", "--overwrite"]) == 1
    assert "--force" in capsys.readouterr().err and (target / "notes.txt").read_text() == "precious"
    assert cli(["quantize", str(float_dir), str(target), "--preset", "example-int8", "--overwrite", "--force"]) == 0
    assert not (target / "notes.txt").exists() and (target / "model.safetensors").exists()


def test_quantizing_onto_the_source_is_refused(float_dir, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(float_dir, src)
    before = (src / "model.safetensors").read_bytes()
    assert cli(["quantize", str(src), str(src), "--preset", "example-int8", "--overwrite"]) == 1
    assert "source checkpoint" in capsys.readouterr().err
    assert (src / "model.safetensors").read_bytes() == before
    model = qcore.load_quantized(src, "example-int8", progress=False)
    with pytest.raises(QcoreError, match="loaded from"):
        qcore.save_quantized(model, src, overwrite=True)


# --- plugins ----------------------------------------------------------------------------
def test_a_plugin_that_calls_sys_exit_on_import_is_listed_as_broken(tmp_path):
    make_dist(tmp_path, "qcore-plugin-quitter", "qcore_quitter", "import sys\nsys.exit(3)\n")
    result = run_python(
        "import json, qcore\nfrom qcore.cli import main\nmain(['plugins', '--json'])\n"
        "print('still here')", path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "still here" in result.stdout
    report = json.loads(result.stdout[: result.stdout.rindex("still here")])
    broken = {b["name"]: b["error"] for b in report["broken"]}
    assert broken["qcore_quitter"].startswith("SystemExit")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs and signals as on Linux")
def test_plugins_listing_survives_everything_above():
    assert cli(["plugins"]) == 0
