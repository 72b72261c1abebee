"""`qcore quantize --method hqq --bits N --group-size G`: the generic flags map onto nbits/group_size."""

import json

import torch
from safetensors.torch import load_file

from qcore.cli import main


def test_cli_bits_and_group_size_map_onto_hqq_keys(tmp_path, float_dir):
    assert main(["quantize", str(float_dir), str(tmp_path / "q"), "--method", "hqq", "--bits", "3",
                 "--group-size", "32"]) == 0
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    params = config["quant_config"]["weight_quant_params"]
    assert (params["nbits"], params["group_size"], params["round_zero"]) == (3, 32, False)
    tensors = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert tensors["model.layers.0.mlp.up_proj.W_q"].dtype == torch.int32  # 3-bit packing
    assert int(tensors["model.layers.0.mlp.up_proj.group_size"]) == 32


def test_cli_preset(tmp_path, float_dir):
    assert main(["quantize", str(float_dir), str(tmp_path / "p"), "--preset", "hqq-2bit-g16"]) == 0
    tensors = load_file(str(tmp_path / "p" / "model.safetensors"))
    assert "".join(map(chr, tensors["model.layers.1.self_attn.o_proj.packing"].tolist())) == "2bit_u8"
