import torch

from qcore_example.linear import Int8Linear, quantize_per_channel


def test_quantize_per_channel_matches_the_definition():
    w = torch.randn(16, 32)
    q, scale = quantize_per_channel(w)
    expected_scale = w.abs().max(dim=1).values / 127
    assert torch.allclose(scale, expected_scale)
    assert torch.equal(q, torch.round(w / expected_scale[:, None]).to(torch.int8))
    assert int(q.abs().max()) == 127


def test_forward_is_linear_of_the_dequantized_weight():
    w, b, x = torch.randn(8, 16), torch.randn(8), torch.randn(3, 16)
    layer = Int8Linear(16, 8, bias=True)
    q, scale = quantize_per_channel(w)
    layer.weight, layer.weight_scale, layer.bias.data = q, scale, b
    expected = x @ (q.float() * scale[:, None]).T + b
    assert torch.allclose(layer(x), expected, atol=1e-6)
