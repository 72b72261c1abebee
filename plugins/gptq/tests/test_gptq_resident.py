"""One resident layout per GPTQ weight: the fast kernel's repacked copy replaces qweight, which is rebuilt only to save."""

import pytest
import torch
from test_gptq_kernels import layer_from

from qcore_gptq.config import GPTQConfig
from qcore_gptq.gptq import gptq_quantize, rtn_quantize
from qcore_gptq.plugin import module_state_dict


def _resident_bytes(layer) -> int:
    tensors = [t for t in layer.buffers() if t is not None]
    tensors += list(layer.fast.tensors().values()) if layer.fast is not None else []
    return sum(t.numel() * t.element_size() for t in tensors)


CASES = [(4, 128, False), (4, 128, True), (8, -1, False)]


@pytest.mark.parametrize(("bits", "group_size", "desc_act"), CASES)
def test_the_repacked_weight_replaces_qweight_and_saving_rebuilds_it_bit_for_bit(bits, group_size, desc_act):
    torch.manual_seed(0)
    W, X = torch.randn(64, 256), torch.randn(128, 256)
    result = (gptq_quantize(W, X.T @ X, bits=bits, group_size=group_size, desc_act=desc_act, sym=False) if bits == 4
              else rtn_quantize(W, 8, -1, sym=True))
    layer = layer_from(result, 256, 64, bits, group_size)
    config = GPTQConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=bits == 8)
    saved_before = {k: v.clone() for k, v in module_state_dict(layer, config).items()}
    checkpoint_bytes = sum(v.numel() * v.element_size() for v in saved_before.values())
    x = torch.randn(3, 256)
    reference = layer(x)  # the reference kernel, on the checkpoint tensors
    layer.prepare_fast_path()
    assert layer.fast is not None and layer._buffers["qweight"] is None  # no second copy of the weight
    assert _resident_bytes(layer) < 1.3 * checkpoint_bytes
    torch.testing.assert_close(layer(x), reference, rtol=1e-4, atol=1e-4)
    saved_after = module_state_dict(layer, config)
    assert saved_after.keys() == saved_before.keys()
    for key, tensor in saved_before.items():
        assert torch.equal(saved_after[key], tensor), key


def test_moving_off_the_cpu_restores_qweight_for_the_gpu_kernels():
    torch.manual_seed(1)
    layer = layer_from(rtn_quantize(torch.randn(32, 128), 4, 32, sym=True), 128, 32, 4, 32)
    original = layer.qweight.clone()
    layer.prepare_fast_path()
    assert layer._buffers["qweight"] is None
    layer.to("meta")  # stands in for a GPU: the CPU layout is dropped, qweight is back (on the new device)
    assert layer.fast is None and layer.qweight.device.type == "meta" and layer.qweight.shape == original.shape
    layer = layer_from(rtn_quantize(torch.randn(32, 128), 4, 32, sym=True), 128, 32, 4, 32)
    layer.prepare_fast_path()
    layer.to(torch.float64)  # a dtype cast leaves the integer and float32 kernel tensors as they are
    assert layer.fast.packed.dtype == torch.uint8 and layer.fast.scales.dtype == torch.float32
