"""HQQ + LoRA: gradients reach the inputs through the frozen quantized layers; an adapter trains."""

import torch

import qcore


class LoraLinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Module, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + x @ self.A.T @ self.B.T


def test_lora_adapter_trains_on_hqq_model(float_dir):
    model = qcore.load_quantized(float_dir, quantization_config="hqq-4bit-g64", progress=False)
    assert qcore.is_trainable(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        layer.self_attn.q_proj = LoraLinear(layer.self_attn.q_proj)
        layer.self_attn.v_proj = LoraLinear(layer.self_attn.v_proj)
    adapters = [p for n, p in model.named_parameters() if n.endswith((".A", ".B"))]
    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    tokens = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    losses = []
    for _ in range(12):
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    # gradients reach the inputs through a quantized layer
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(1, 3, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad[0, 0], layer.dequantized_weight().sum(0))
