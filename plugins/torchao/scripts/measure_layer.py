"""SmolLM2 linears: torchao's CPU path vs the plugin's kernels, per layer and per decoded token.

    python plugins/torchao/scripts/measure_layer.py [--threads 1] [--repeats 400]

Minimum over repeats of one forward (robust on a shared machine) of model.layers.0.mlp.down_proj
(576 x 1536) at 1 row (decode) and 64 rows (prefill); and "linears per token": the 1-row times of
the seven linears of block 0 summed and multiplied by the 30 blocks (the quantized part of a decode
step; attention, norms and the float lm_head come on top). For float32 F.linear and, per config,
torchao's path and qcore's path (TorchAoLinear).
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings


def _linear(x, weight):
    import torch

    return torch.nn.functional.linear(x, weight)


def best_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import torch
    from safetensors import safe_open
    from torch import nn

    import qcore
    from qcore.testdata import smollm2_checkpoint
    from qcore_torchao.linear import TorchAoLinear
    from qcore_torchao.quantize import _quantize_linear_weight

    torch.set_num_threads(args.threads)
    names = [f"model.layers.0.{n}" for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                              "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    with safe_open(str(smollm2_checkpoint() / "model.safetensors"), framework="pt") as fh:
        weights = {name: fh.get_tensor(f"{name}.weight").float() for name in names}
    down = weights["model.layers.0.mlp.down_proj"]
    gen = torch.Generator().manual_seed(0)
    inputs = {rows: torch.randn(1, rows, down.shape[1], generator=gen) for rows in (1, 64)}
    one_row = {name: torch.randn(1, 1, w.shape[1], generator=gen) for name, w in weights.items()}

    def per_token(forwards: dict) -> float:
        """30 blocks x the seven 1-row linear times of block 0 (name -> callable taking x)."""
        return 30 * sum(best_ms(functools.partial(forwards[n], one_row[n]), args.repeats // 4) for n in names)

    print("| path | down_proj 1 row ms | down_proj 64 rows ms | linears per token ms |")
    print("|---|---:|---:|---:|")
    with torch.no_grad():
        row = [best_ms(lambda x=x: nn.functional.linear(x, down), args.repeats) for x in inputs.values()]
        total = per_token({n: functools.partial(_linear, weight=w) for n, w in weights.items()})
        print(f"| float32 F.linear | {row[0]:.3f} | {row[1]:.3f} | {total:.1f} |")
        for preset in ("torchao-int8wo", "torchao-intx4-g32", "torchao-int8dq", "torchao-fp8wo"):
            ao_config = qcore.plugins.preset_config(preset).ao_config()
            layers = {}
            for name, w in weights.items():
                layer = TorchAoLinear(w.shape[1], w.shape[0], bias=False, device="meta")
                layer.set_weight(_quantize_linear_weight(w, ao_config))
                layers[name] = layer
            layer = layers["model.layers.0.mlp.down_proj"]
            torchao_row = [best_ms(lambda x=x, w=layer.weight: nn.functional.linear(x, w), args.repeats) for x in inputs.values()]
            qcore_row = [best_ms(lambda x=x, f=layer: f(x), args.repeats) for x in inputs.values()]
            torchao_total = per_token({n: functools.partial(_linear, weight=m.weight) for n, m in layers.items()})
            qcore_total = per_token(layers)
            print(f"| {preset} torchao | {torchao_row[0]:.3f} | {torchao_row[1]:.3f} | {torchao_total:.1f} |")
            print(f"| {preset} qcore | {qcore_row[0]:.3f} | {qcore_row[1]:.3f} | {qcore_total:.1f} |")


if __name__ == "__main__":
    main()
