"""Pre-quantized checkpoints that qcore did not write: transformers' own quantize op + safetensors, or the
test's block-by-block reference. They load and stay FP8, give transformers' logits, and save back byte-identical."""

import json

import pytest
import torch
from fp8_helpers import linear_names, reference_dequantize, reference_quantize, transformers_quantize, write_checkpoint
from safetensors.torch import load_file

import qcore
from qcore.testdata import tiny_llama

TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def transformers_config(**kwargs) -> dict:
    from transformers import FineGrainedFP8Config

    return json.loads(FineGrainedFP8Config(**kwargs).to_json_string())


@pytest.fixture(scope="module")
def divisible_checkpoint(tmp_path_factory):
    """A tiny llama whose every linear divides 32x32 blocks, written with transformers' own quantize op."""
    path = tmp_path_factory.mktemp("fp8") / "transformers-fp8"
    model = tiny_llama(attention_bias=True)
    write_checkpoint(path, model, transformers_config(weight_block_size=(32, 32)),
                     lambda name, w: transformers_quantize(w, (32, 32)))
    return path


def transformers_logits(path, dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)  # on CPU transformers dequantizes while loading
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_logits_as_transformers(divisible_checkpoint, dtype):
    model = qcore.load_quantized(divisible_checkpoint, torch_dtype=dtype, progress=False)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.float8_e4m3fn and q_proj.bias.dtype == dtype  # FP8 in memory, 1 byte/weight
    with torch.no_grad():
        ours = model(TOKENS).logits
    assert torch.equal(ours, transformers_logits(divisible_checkpoint, dtype))


def test_save_round_trip_is_byte_identical(divisible_checkpoint, tmp_path):
    model = qcore.load_quantized(divisible_checkpoint, progress=False)
    with torch.no_grad():
        model(TOKENS)
    saved = qcore.save_quantized(model, tmp_path / "again")
    original, written = load_file(str(divisible_checkpoint / "model.safetensors")), load_file(str(saved / "model.safetensors"))
    assert original.keys() == written.keys()
    for name, tensor in original.items():
        assert tensor.dtype == written[name].dtype and tensor.shape == written[name].shape, name
        assert torch.equal(tensor.view(torch.uint8), written[name].view(torch.uint8)), name
    config = json.loads((saved / "config.json").read_text())["quantization_config"]
    assert config == json.loads((divisible_checkpoint / "config.json").read_text())["quantization_config"]


def test_a_checkpoint_qcore_quantized_loads_in_transformers_with_the_same_logits(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "float")
    model = qcore.load_quantized(tmp_path / "float", qcore.config("fp8", weight_block_size=[32, 32]), progress=False)
    path = qcore.save_quantized(model, tmp_path / "fp8")
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, transformers_logits(path, torch.float32))


@pytest.fixture(scope="module")
def odd_model():
    """Sizes that are not multiples of the 64x64 block: 96, 48 (k/v), 200."""
    return tiny_llama(hidden_size=96, intermediate_size=200, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("block", [(64, 64), (128, 128), None])
def test_non_divisible_shapes_match_an_independent_dequantizer(odd_model, block, tmp_path):
    truth = {}

    def quantize(name, weight):
        q, inv = reference_quantize(weight, block)
        truth[name] = reference_dequantize(q, inv, block)
        return {"weight": q, "weight_scale_inv": inv}

    path = tmp_path / "odd"
    write_checkpoint(path, odd_model, transformers_config(weight_block_size=block), quantize)
    model = qcore.load_quantized(path, progress=False)
    float_model = tiny_llama(hidden_size=96, intermediate_size=200, num_attention_heads=4, num_key_value_heads=2)
    with torch.no_grad():
        for name in linear_names(odd_model):
            assert torch.equal(model.get_submodule(name).dequantized_weight(torch.float32), truth[name]), name
            float_model.get_submodule(name).weight.copy_(truth[name])
        assert torch.equal(model(TOKENS).logits, float_model(TOKENS).logits)


@pytest.mark.parametrize("layout", ["float32", "uint8"])
def test_ue8m0_checkpoints_load(odd_model, layout, tmp_path):
    """DeepSeek-V3.1 ships ue8m0 scales as float32 powers of two; MXFP8 checkpoints as exponent bytes (2^(b-127))."""
    block = (64, 64)
    truth = {}

    def quantize(name, weight):
        grid = tuple(-(-s // b) for s, b in zip(weight.shape, block, strict=True))
        padded = torch.zeros(grid[0] * 64, grid[1] * 64)
        padded[: weight.shape[0], : weight.shape[1]] = weight
        out = transformers_quantize(padded, block, scale_fmt="ue8m0")
        q = out["weight"][: weight.shape[0], : weight.shape[1]].contiguous()
        inv = out["weight_scale_inv"]
        truth[name] = reference_dequantize(q, inv.float(), block)
        return {"weight": q, "weight_scale_inv": inv.float() if layout == "float32" else inv.view(torch.uint8)}

    path = tmp_path / "ue8m0"
    write_checkpoint(path, odd_model, transformers_config(weight_block_size=block, scale_fmt="ue8m0"), quantize)
    model = qcore.load_quantized(path, progress=False)
    for name in linear_names(odd_model):
        assert torch.equal(model.get_submodule(name).dequantized_weight(torch.float32), truth[name]), name
    again = qcore.save_quantized(model, tmp_path / "again")
    original, written = load_file(str(path / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert all(torch.equal(original[k].view(torch.uint8), written[k].view(torch.uint8)) for k in original)


def test_static_activation_scales_are_kept(divisible_checkpoint, tmp_path):
    state = load_file(str(divisible_checkpoint / "model.safetensors"))
    names = [k.removesuffix(".weight_scale_inv") for k in state if k.endswith(".weight_scale_inv")]
    state.update({f"{n}.activation_scale": torch.tensor(0.5 + i) for i, n in enumerate(names)})
    path = tmp_path / "static"
    path.mkdir()
    from safetensors.torch import save_file

    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((divisible_checkpoint / "config.json").read_text())
    config["quantization_config"]["activation_scheme"] = "static"
    (path / "config.json").write_text(json.dumps(config))
    model = qcore.load_quantized(path, progress=False)
    written = load_file(str(qcore.save_quantized(model, tmp_path / "again") / "model.safetensors"))
    assert all(torch.equal(written[f"{n}.activation_scale"], state[f"{n}.activation_scale"]) for n in names)


def test_deepseek_v4_scale_name_is_read_and_written_back(divisible_checkpoint, tmp_path):
    from safetensors.torch import save_file

    state = {k.replace(".weight_scale_inv", ".scale"): v for k, v in load_file(str(divisible_checkpoint / "model.safetensors")).items()}
    path = tmp_path / "v4names"
    path.mkdir()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text((divisible_checkpoint / "config.json").read_text())
    model = qcore.load_quantized(path, progress=False)
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, qcore.load_quantized(divisible_checkpoint, progress=False)(TOKENS).logits)
    written = load_file(str(qcore.save_quantized(model, tmp_path / "again") / "model.safetensors"))
    assert written.keys() == state.keys()

