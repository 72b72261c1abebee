import torch
from torch import nn


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float (out, in) -> int8 (out, in) and float32 scale (out,), with weight ≈ q * scale[:, None]."""
    weight = weight.float()  # no copy when it already is
    low, high = torch.aminmax(weight, dim=1)
    scale = torch.maximum(-low, high).clamp(min=1e-8) / 127
    # one float temporary, rounded and clipped in place: loading holds one weight and this at a time
    q = (weight / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T + bias, dequantizing on the fly."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.to(torch.float32) * self.weight_scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), self.bias)
