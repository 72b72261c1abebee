"""GPTQ 4-bit decode through the int8-activation path (QCORE_INT8_ACTIVATIONS=1) within its error bound.

The codes 0..15 are exact in int8, so the only approximation is x rounded to int8 per 64 values
(error <= dx/2 per element, dx = max|x| / 127 of its block), plus float32 rounding of the
s*q and s*z terms that the zero point subtracts.
"""

import pytest
import torch
from test_gptq_kernels import layer_from

from qcore_gptq.gptq import gptq_quantize


@pytest.mark.parametrize(("in_features", "group_size", "desc_act"), [(256, 128, False), (576, 64, True), (512, -1, False)])
def test_int8_activation_decode_is_within_its_error_bound(monkeypatch, in_features, group_size, desc_act):
    monkeypatch.setenv("QCORE_INT8_ACTIVATIONS", "1")
    torch.manual_seed(0)
    W, X = torch.randn(48, in_features), torch.randn(256, in_features)
    layer = layer_from(gptq_quantize(W, X.T @ X, bits=4, group_size=group_size, desc_act=desc_act, sym=False),
                       in_features, 48, 4, group_size)
    w = layer.dequantized_weight(torch.float64)
    layer.prepare_fast_path()
    assert type(layer.fast).__name__ == "Int4LutWeight" and layer.fast.int8_activations
    for rows in (1, 4):
        x = torch.randn(rows, in_features) * 3
        x[:, 7] = 60.0
        y = layer(x).double()
        exact = x.double() @ w.T
        xp = x.double()[:, layer.fast.perm] if layer.fast.perm is not None else x.double()
        xp = torch.nn.functional.pad(xp, (0, layer.fast.pad))
        dx = xp.abs().view(rows, -1, 64).amax(-1) / 127
        wp = w[:, layer.fast.perm] if layer.fast.perm is not None else w
        wp = torch.nn.functional.pad(wp, (0, layer.fast.pad))
        sq = layer.fast.scales.double().view(48, -1).repeat_interleave(layer.fast.group_size, dim=1) * 15  # |s q| <= 15 s
        bound = (dx / 2).repeat_interleave(64, dim=1) @ wp.abs().T + 2e-5 * (xp.abs() @ (2 * sq).T)
        err = (y - exact).abs()
        assert (err <= bound).all(), f"worst error / bound = {(err / bound).max():.3f}"
        assert err.max() > 0
