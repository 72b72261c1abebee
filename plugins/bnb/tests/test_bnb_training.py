"""QLoRA: a LoRA adapter trains on top of the frozen 4-bit model."""

import torch
from torch import nn

import qcore


class LoRA(nn.Module):
    """y = base(x) + x @ A.T @ B.T * scale, only A and B train."""

    def __init__(self, base: nn.Module, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.a.t()) @ self.b.t()


def test_lora_on_4bit_trains_and_gradients_reach_the_inputs(float_dir):
    model = qcore.load_quantized(float_dir, "bnb-nf4", progress=False)
    assert qcore.is_trainable(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        layer.self_attn.q_proj = LoRA(layer.self_attn.q_proj)
        layer.self_attn.v_proj = LoRA(layer.self_attn.v_proj)
    adapters = [p for n, p in model.named_parameters() if n.endswith((".a", ".b"))]
    for p in adapters:
        p.requires_grad_(True)
    model.train()
    optimizer = torch.optim.Adam(adapters, lr=3e-2)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))  # memorize two sequences
    losses = []
    for _ in range(40):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.93, losses  # memorizing two sequences: a clear, steady fall
    assert all(p.grad is not None for p in adapters)
    # the 4-bit weights themselves never changed and hold no gradient
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.uint8


def test_gradient_through_4bit_linear_matches_the_dequantized_weight(float_dir):
    model = qcore.load_quantized(float_dir, "bnb-nf4", progress=False)
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    expected = layer.dequantized_weight(torch.float32).sum(dim=0).expand(3, -1)
    assert torch.allclose(x.grad, expected, atol=1e-6)
