"""The AutoAWQ GEMM/GEMV layouts, decoded by an independent unpacker written from the format description."""

import json

import pytest
import torch
from safetensors.torch import load_file

import qcore
from qcore.errors import CheckpointError, ConfigError
from qcore.testing import rewrite_checkpoint

MODULE = "model.layers.0.mlp.down_proj"
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def unpack_gemm_reference(words):
    """int32 (rows, cols/8) -> ints (rows, cols): word j of a row holds column 8j + AWQ_ORDER[k] at bits 4k..4k+3."""
    rows = []
    for row in words.tolist():
        values = [0] * (8 * len(row))
        for j, word in enumerate(row):
            for k in range(8):
                values[8 * j + AWQ_ORDER[k]] = ((word & 0xFFFFFFFF) >> (4 * k)) & 0xF
        rows.append(values)
    return torch.tensor(rows)


def unpack_gemv_reference(words):
    """int32 (rows, n/8) -> ints (rows, n): word j holds value 8j + k at bits 4k..4k+3 (natural order)."""
    return torch.tensor([[((w & 0xFFFFFFFF) >> (4 * k)) & 0xF for w in row for k in range(8)] for row in words.tolist()])


def decode_gemm(t, prefix, in_features):
    q = unpack_gemm_reference(t[f"{prefix}.qweight"]).float()  # (in, out)
    z = unpack_gemm_reference(t[f"{prefix}.qzeros"]).float()  # (G, out)
    s = t[f"{prefix}.scales"].float()  # (G, out)
    g = torch.arange(in_features) // (in_features // s.shape[0])
    return (s[g] * (q - z[g])).T


def decode_gemv(t, prefix, in_features, group_size):
    q = unpack_gemv_reference(t[f"{prefix}.qweight"]).float()  # (out, in)
    groups = in_features // group_size
    z = unpack_gemv_reference(t[f"{prefix}.qzeros"])[:, :groups].float()  # (out, G)
    s = t[f"{prefix}.scales"][:, :groups].float()
    g = torch.arange(in_features) // group_size
    return s[:, g] * (q - z[:, g])


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    from qcore.testdata import tiny_llama

    path = tmp_path_factory.mktemp("awq") / "float"
    tiny_llama(intermediate_size=192).save_pretrained(path)  # down_proj: 192 inputs, 3 groups of 64
    return path


@pytest.mark.parametrize("version", ["gemm", "gemv"])
def test_saved_tensors_decode_to_the_model_weight(float_dir, tmp_path, version):
    model = qcore.load_quantized(float_dir, qcore.config("awq", group_size=64, version=version), progress=False)
    path = qcore.save_quantized(model, tmp_path / "q")
    t = load_file(str(path / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "awq" and config["bits"] == 4 and config["version"] == version
    assert config["zero_point"] is True and config["group_size"] == 64
    qweight, qzeros, scales = (t[f"{MODULE}.{k}"] for k in ("qweight", "qzeros", "scales"))
    assert qweight.dtype == torch.int32 and qzeros.dtype == torch.int32 and scales.dtype == torch.float16
    if version == "gemm":
        assert qweight.shape == (192, 8) and qzeros.shape == (3, 8) and scales.shape == (3, 64)
        weight = decode_gemm(t, MODULE, 192)
    else:  # 3 groups: one word of zeros, 8 scales per row, padded (AutoAWQ's calculate_zeros_width, x2 for g64)
        assert qweight.shape == (64, 24) and qzeros.shape == (64, 2) and scales.shape == (64, 16)
        assert (scales[:, 3:] == 0).all()
        weight = decode_gemv(t, MODULE, 192, 64)
    module = model.get_submodule(MODULE)
    assert torch.equal(weight, module.dequantized_weight())
    float_weight = load_file(str(float_dir / "model.safetensors"))[f"{MODULE}.weight"]
    assert (weight - float_weight).abs().max() < (float_weight.abs().max() / 7)  # 4-bit: within a step or so


def test_gemm_and_gemv_hold_the_same_layer(float_dir, tmp_path):
    weights = {}
    for version in ("gemm", "gemv"):
        model = qcore.load_quantized(float_dir, qcore.config("awq", group_size=64, version=version), progress=False)
        weights[version] = model.get_submodule(MODULE).dequantized_weight()
    assert torch.equal(weights["gemm"], weights["gemv"])


@pytest.fixture(scope="module")
def gemm_dir(float_dir, tmp_path_factory):
    model = qcore.load_quantized(float_dir, qcore.config("awq", group_size=64), progress=False)
    return qcore.save_quantized(model, tmp_path_factory.mktemp("q") / "ckpt")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update({f"{MODULE}.qweight": torch.zeros(192, 4, dtype=torch.int32)}), "do not fit"),
        (lambda t: t.update({f"{MODULE}.scales": torch.zeros(2, 64, dtype=torch.float16)}), "group_size"),
        (lambda t: t.update({f"{MODULE}.qzeros": torch.zeros(3, 4, dtype=torch.int32)}), "do not fit"),
        (lambda t: t.update({f"{MODULE}.qweight": torch.zeros(192, 8, dtype=torch.int64)}), "int32"),
        (lambda t: t.pop(f"{MODULE}.qzeros"), "lacks 'qzeros'"),
    ],
    ids=["qweight shape", "scales vs group_size", "qzeros shape", "qweight dtype", "missing qzeros"],
)
def test_inconsistent_checkpoints_name_the_module(gemm_dir, tmp_path, edit, message):
    broken = rewrite_checkpoint(gemm_dir, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        qcore.load_quantized(broken, progress=False)
    assert MODULE in str(info.value)


def test_gemv_checkpoint_claiming_gemm_is_named(float_dir, tmp_path):
    model = qcore.load_quantized(float_dir, qcore.config("awq", group_size=64, version="gemv"), progress=False)
    path = qcore.save_quantized(model, tmp_path / "gemv")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["version"] = "gemm"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="GEMV layout") as info:
        qcore.load_quantized(path, progress=False)
    assert "model.layers.0." in str(info.value)


def test_group_size_that_does_not_divide_a_layer_names_it_and_what_works(tmp_path):
    from qcore.testdata import tiny_llama

    tiny_llama(hidden_size=96, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path / "f")
    with pytest.raises(ConfigError, match=r"in_features=96 is not a multiple of group_size=64.*32 \(or -1") as info:
        qcore.load_quantized(tmp_path / "f", qcore.config("awq", group_size=64), progress=False)
    assert "model.layers.0.self_attn.q_proj" in str(info.value)


def test_checkpoint_config_keys_of_other_tools_are_accepted(gemm_dir, tmp_path):
    from transformers import AwqConfig

    written = AwqConfig(bits=4, group_size=64).to_dict()  # what transformers 5 writes, GPTQ-inherited keys and all
    written["quant_method"] = "awq"
    config = json.loads((gemm_dir / "config.json").read_text())
    config["quantization_config"] = json.loads(json.dumps(written, default=str))
    target = rewrite_checkpoint(gemm_dir, tmp_path / "foreign", lambda t: None)
    (target / "config.json").write_text(json.dumps(config))
    model = qcore.load_quantized(target, progress=False)
    assert model.qcore_config.group_size == 64 and model.qcore_config.layout == "gemm"
    assert model.qcore_config.to_dict()["true_sequential"] is True  # kept, written back as it was


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"bits": 8}, "4-bit"), ({"zero_point": False}, "zero_point"), ({"group_sise": 64}, "group_size"),
     ({"version": "marlin"}, "gemm"), ({"version": "gemm", "format": "gemv"}, "disagree"), ({"group_size": 0}, "multiple of 8")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        qcore.config("awq", **kwargs)


def test_autoawq_minimal_config_is_read():
    from qcore_awq.config import AWQConfig

    config = AWQConfig.from_dict({"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4,
                                  "version": "GEMM", "modules_to_not_convert": None})
    assert config.layout == "gemm" and config.group_size == 128
