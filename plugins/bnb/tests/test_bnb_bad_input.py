"""Broken bitsandbytes checkpoints and configs: clear errors naming the module."""

import json

import pytest
import torch

import qcore
from qcore.errors import CheckpointError, ConfigError
from qcore.testing import rewrite_checkpoint

MODULE = "model.layers.0.self_attn.q_proj"
STATE = f"{MODULE}.weight.quant_state.bitsandbytes__nf4"


@pytest.fixture(scope="module")
def nf4_dir(float_dir, tmp_path_factory):
    model = qcore.load_quantized(float_dir, "bnb-nf4", progress=False)
    return qcore.save_quantized(model, tmp_path_factory.mktemp("nf4") / "ckpt")


def json_tensor(data):
    return torch.tensor(list(json.dumps(data).encode()), dtype=torch.uint8)


def state_of(tensors):
    return json.loads(bytes(tensors[STATE].tolist()).decode())


EDITS = {
    "missing absmax": (lambda t: t.pop(f"{MODULE}.weight.absmax"), "lacks 'weight.absmax'"),
    "missing quant_state": (lambda t: t.pop(STATE), "quant_state"),
    "quant_state not JSON": (lambda t: t.update({STATE: torch.tensor(list(b"{not json"), dtype=torch.uint8)}), "does not parse"),
    "quant_state shape lies": (lambda t: t.update({STATE: json_tensor({**state_of(t), "shape": [32, 128]})}), "does not match the layer"),
    "blocksize does not fit": (lambda t: t.update({STATE: json_tensor({**state_of(t), "blocksize": 48})}), "weight.absmax .* needs uint8 of shape"),
    "blocksize zero": (lambda t: t.update({STATE: json_tensor({**state_of(t), "blocksize": 0})}), "blocksize 0"),
    "nested_blocksize zero": (lambda t: t.update({STATE: json_tensor({**state_of(t), "nested_blocksize": 0})}), "nested_blocksize 0"),
    "nested_blocksize text": (lambda t: t.update({STATE: json_tensor({**state_of(t), "nested_blocksize": "256"})}), "nested_blocksize '256'"),
    "nested_offset text": (lambda t: t.update({STATE: json_tensor({**state_of(t), "nested_offset": "0.1"})}), "nested_offset '0.1'"),
    "shape of text": (lambda t: t.update({STATE: json_tensor({**state_of(t), "shape": "64x64"})}), "shape '64x64'"),
    "quant_state stored as float": (lambda t: t.update({STATE: t[STATE].float()}), "needs uint8"),
    "quant_map stored as integers": (lambda t: t.update({f"{MODULE}.weight.quant_map": t[f"{MODULE}.weight.quant_map"].to(torch.int32)}), "quant_map is int32"),
    "absmax stored as int32": (lambda t: t.update({f"{MODULE}.weight.absmax": t[f"{MODULE}.weight.absmax"].to(torch.int32)}), "absmax is int32"),
    "nested_absmax as integers": (lambda t: t.update({f"{MODULE}.weight.nested_absmax": t[f"{MODULE}.weight.nested_absmax"].to(torch.int64)}), "nested_absmax is int64"),
    "0-d quant_map": (lambda t: t.update({f"{MODULE}.weight.quant_map": torch.tensor(1.0)}), "quant_map is float32 \\[\\]"),
    "4-bit and 8-bit keys mixed": (lambda t: t.update({f"{MODULE}.SCB": torch.ones(64)}), "both 4-bit"),
    "missing nested absmax": (lambda t: t.pop(f"{MODULE}.weight.nested_absmax"), "nested_absmax"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_broken_checkpoint_names_the_module(nf4_dir, tmp_path, case):
    edit, message = EDITS[case]
    broken = rewrite_checkpoint(nf4_dir, tmp_path / "broken", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        qcore.load_quantized(broken, progress=False)
    assert MODULE in str(info.value)


def test_config_saying_8bit_for_a_4bit_checkpoint(nf4_dir, tmp_path):
    config = json.loads((nf4_dir / "config.json").read_text())
    config["quantization_config"].update(load_in_4bit=False, load_in_8bit=True, _load_in_4bit=False, _load_in_8bit=True)
    broken = rewrite_checkpoint(nf4_dir, tmp_path / "broken", lambda t: None)
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config says 8bit but the checkpoint holds 4bit"):
        qcore.load_quantized(broken, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"load_in_4bit": True, "load_in_8bit": True}, "choose one"),
        ({}, "load_in_4bit=True"),
        ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf5"}, "'nf4' or 'fp4'"),
        ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "float17"}, "torch dtype"),
        ({"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4"}, "did you mean 'bnb_4bit_quant_type'"),
        ({"load_in_8bit": True, "llm_int8_has_fp16_weight": True}, "not supported"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        qcore.config("bitsandbytes", **kwargs)


def test_hf_config_round_trips_through_transformers():
    from transformers import BitsAndBytesConfig

    ours = qcore.config("bitsandbytes", load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype="bfloat16")
    theirs = BitsAndBytesConfig.from_dict(ours.to_dict())
    assert theirs.bnb_4bit_quant_type == "nf4" and theirs.bnb_4bit_compute_dtype == torch.bfloat16
    back = qcore.plugins.config_from_dict(theirs.to_dict())
    assert back == ours


def test_llm_int8_skip_modules_maps_onto_targeting(float_dir):
    cfg = qcore.config("bitsandbytes", load_in_8bit=True, llm_int8_skip_modules=[r"model\.layers\.\d+\.mlp", "lm_head"])
    model = qcore.load_quantized(float_dir, cfg, progress=False)
    assert not any(".mlp." in n for n in model.qcore_modules) and "model.layers.0.self_attn.q_proj" in model.qcore_modules
