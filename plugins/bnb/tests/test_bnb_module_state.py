"""Linear4bit's lookup state (code, byte-pair table, float absmax, quant state) moves with the module."""

import torch

from qcore_bnb import kernels
from qcore_bnb.format import QuantState4bit
from qcore_bnb.linear import Linear4bit
from qcore_bnb.plugin import BLOCKSIZE, NESTED_BLOCKSIZE


def _layer(nested: bool) -> tuple[Linear4bit, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(48, 128)
    packed, absmax = kernels.quantize_4bit(w, BLOCKSIZE, "fp4")
    state = QuantState4bit("fp4", BLOCKSIZE, "float32", (48, 128), absmax, kernels.code_4bit("fp4"))
    if nested:
        offset = absmax.mean()
        state.absmax, state.nested_absmax = kernels.quantize_blockwise_8bit(absmax - offset, NESTED_BLOCKSIZE)
        state.nested_quant_map = kernels.dynamic_map_signed().clone()
        state.nested_blocksize, state.nested_dtype, state.nested_offset = NESTED_BLOCKSIZE, "float32", offset.item()
    layer = Linear4bit(128, 48, False, torch.float32, device="cpu")
    layer.set_state(packed, state)
    return layer, packed


def test_code_and_table_are_buffers_that_state_dict_leaves_out():
    layer, _ = _layer(nested=True)
    buffers = dict(layer.named_buffers())
    assert torch.equal(buffers["code"], kernels.code_4bit("fp4"))
    assert torch.equal(buffers["table"], kernels.byte_pair_table(kernels.code_4bit("fp4")))
    assert "code" not in layer.state_dict() and "table" not in layer.state_dict()


def test_to_moves_every_tensor_and_a_dtype_cast_keeps_the_statistics_float32():
    layer, packed = _layer(nested=True)
    x = torch.randn(1, 128)
    with torch.no_grad():
        before = layer(x)
    layer.to("meta")  # a device move (meta stands in for a GPU here)
    s = layer.state
    for t in (layer.weight, layer.absmax, layer.code, layer.table, s.absmax, s.quant_map, s.nested_absmax, s.nested_quant_map):
        assert t.device.type == "meta"
    layer.to_empty(device="cpu")  # and back: the buffers are real again (values reloaded below)
    assert all(t.device.type == "cpu" for t in (layer.code, layer.table, s.absmax, s.quant_map, s.nested_quant_map))
    layer, _ = _layer(nested=True)
    layer.to(torch.bfloat16)
    assert layer.code.dtype == layer.absmax.dtype == layer.table.dtype == torch.float32
    assert layer.state.quant_map.dtype == torch.float32 and layer.state.absmax.dtype == torch.uint8
    with torch.no_grad():
        torch.testing.assert_close(layer(x), before)
    assert torch.equal(layer.checkpoint_tensors()["weight"], packed)
