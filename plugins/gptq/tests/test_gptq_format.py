"""The GPTQ format, decoded by an independent unpacker written from the format description."""

import json

import pytest
import torch
from safetensors.torch import load_file

import qcore
from qcore.errors import CheckpointError
from qcore.testing import rewrite_checkpoint

MODULE = "model.layers.0.mlp.down_proj"


def unpack_reference(word_rows, bits, count):
    """Values of a little-endian bit stream of int32 words, one Python int at a time."""
    out = []
    for row in word_rows:
        stream = 0
        for k, word in enumerate(row):
            stream |= (int(word) & 0xFFFFFFFF) << (32 * k)
        out.append([(stream >> (bits * i)) & ((1 << bits) - 1) for i in range(count)])
    return torch.tensor(out)


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    from qcore.testdata import tiny_llama

    path = tmp_path_factory.mktemp("gptq") / "float"
    tiny_llama(intermediate_size=192).save_pretrained(path)  # down_proj: 192 inputs = 128 + a partial group of 64
    return path


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_saved_tensors_decode_to_the_model_weight(float_dir, tmp_path, bits, checkpoint_format):
    cfg = qcore.config("gptq", bits=bits, group_size=128, sym=False, checkpoint_format=checkpoint_format)
    model = qcore.load_quantized(float_dir, cfg, progress=False)
    path = qcore.save_quantized(model, tmp_path / "q")
    t = load_file(str(path / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["bits"] == bits and config["checkpoint_format"] == checkpoint_format
    qweight, qzeros, scales, g_idx = (t[f"{MODULE}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx"))
    assert qweight.dtype == torch.int32 and qweight.shape == (192 * bits // 32, 64)
    assert qzeros.dtype == torch.int32 and qzeros.shape == (2, 64 * bits // 32)
    assert scales.dtype == torch.float16 and scales.shape == (2, 64)
    assert torch.equal(g_idx, (torch.arange(192) // 128).to(torch.int32))
    q = unpack_reference(qweight.T.tolist(), bits, 192).T  # packed along the input dimension
    zeros = unpack_reference(qzeros.tolist(), bits, 64) + (1 if checkpoint_format == "gptq" else 0)
    weight = scales.float()[g_idx.long()] * (q - zeros[g_idx.long()])
    module = model.get_submodule(MODULE)
    assert torch.equal(weight.T, module.dequantized_weight())


def test_v1_checkpoint_read_as_v2_would_be_off_by_one(float_dir, tmp_path):
    model = qcore.load_quantized(float_dir, qcore.config("gptq", bits=4, sym=False), progress=False)
    path = qcore.save_quantized(model, tmp_path / "v1")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (path / "config.json").write_text(json.dumps(config))
    as_v2 = qcore.load_quantized(path, progress=False)
    diff = as_v2.get_submodule(MODULE).zeros - model.get_submodule(MODULE).zeros
    assert (diff == -1).all()


@pytest.fixture(scope="module")
def gptq_dir(float_dir, tmp_path_factory):
    model = qcore.load_quantized(float_dir, qcore.config("gptq", bits=4, desc_act=True), progress=False)
    return qcore.save_quantized(model, tmp_path_factory.mktemp("q") / "ckpt")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.update({f"{MODULE}.g_idx": torch.zeros(100, dtype=torch.int32)}), "g_idx has 100 entries"),
        (lambda t: t.update({f"{MODULE}.g_idx": torch.full((192,), 9, dtype=torch.int32)}), "outside"),
        (lambda t: t.update({f"{MODULE}.qweight": torch.zeros(48, 64, dtype=torch.int32)}), "right bits"),
        (lambda t: t.pop(f"{MODULE}.scales"), "lacks 'scales'"),
        (lambda t: t.update({f"{MODULE}.qzeros": torch.zeros(3, 8, dtype=torch.int32)}), "do not fit"),
        (lambda t: t.update({f"{MODULE}.qzeros": t[f"{MODULE}.qzeros"].float()}), "qzeros is float32"),
        (lambda t: t.update({f"{MODULE}.scales": t[f"{MODULE}.scales"].to(torch.int32)}), "scales is int32"),
        (lambda t: t.update({f"{MODULE}.scales": torch.tensor(0.01, dtype=torch.float16)}), "scales"),
        (lambda t: t.update({f"{MODULE}.scales": torch.full_like(t[f"{MODULE}.scales"], float("nan"))}), "NaN"),
        (lambda t: t.update({f"{MODULE}.g_idx": t[f"{MODULE}.g_idx"].float().fill_(float("nan"))}), "g_idx is float32"),
        (lambda t: t.update({f"{MODULE}.g_idx": t[f"{MODULE}.g_idx"].reshape(-1, 1)}), "g_idx"),
    ],
    ids=["g_idx length", "g_idx range", "qweight vs bits", "missing scales", "qzeros shape", "qzeros float",
         "scales int32", "0-d scales", "NaN scales", "g_idx NaN", "g_idx rank"],
)
def test_inconsistent_checkpoints_name_the_module(gptq_dir, tmp_path, edit, message):
    broken = rewrite_checkpoint(gptq_dir, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        qcore.load_quantized(broken, progress=False)
    assert MODULE in str(info.value)


def test_checkpoint_config_keys_of_other_tools_are_accepted(gptq_dir, tmp_path):
    config = json.loads((gptq_dir / "config.json").read_text())
    config["quantization_config"].update(use_exllama=False, dataset="c4", tokenizer=None, meta={"quantizer": ["gptqmodel"]})
    target = rewrite_checkpoint(gptq_dir, tmp_path / "foreign", lambda t: None)
    (target / "config.json").write_text(json.dumps(config))
    model = qcore.load_quantized(target, progress=False)
    assert model.qcore_config.to_dict()["dataset"] == "c4"


def test_config_errors():
    from qcore.errors import ConfigError

    for kwargs, message in [({"bits": 5}, "2, 3, 4 or 8"), ({"group_size": 0}, "positive or -1"),
                            ({"checkpoint_format": "marlin"}, "checkpoint_format"), ({"damp_percnt": 0.1}, "damp_percent")]:
        with pytest.raises(ConfigError, match=message):
            qcore.config("gptq", **kwargs)
