"""Decode speed of one plugin's CPU kernels (qcore.int4 on its own binary) against its old path, float and upstream.

    python plugins/hqq/bench/measure_int4_kernels.py --plugin hqq|awq|torchao [--threads 1 2] [--rounds 15]

Run it in the plugin's virtualenv (hqq's and torchao's upstream rows need those libraries). One row of x
(a decode step), random weights of the right format (speed does not depend on the values), median (and fastest) ms
over interleaved rounds (every implementation once per round, in turn), for:

- ``5632x2048``: one 1.1B-llama MLP layer (out x in);
- ``smollm2/token``: the seven linears of a SmolLM2-135M block (q, k, v, o, gate, up, down) summed, x 30
  blocks: the quantized part of one decoded token (attention, norms and the lm_head come on top).

Rows: ``f32`` / ``bf16`` (F.linear), ``after`` (this plugin's layout from :mod:`qcore.int4`, the exact
float32 path), ``after-q8`` (the same with int8 activations, ``lut4_gemm_q8``), ``before`` (what the plugin
ran before it had a binary: torch's ``_weight_int4pack_mm_for_cpu`` / ``_weight_int8pack_mm``, in the dtype
it used), and upstream (``hqq``: hqq 0.2.8's HQQLinear on the CPU; ``torchao``: torchao's own F.linear).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SMOLLM2 = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
BLOCKS = 30
GROUP = 64


def random_int4(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scales = torch.rand(n, k // GROUP, generator=g) * 0.01 + 0.001
    zeros = torch.rand(n, k // GROUP, generator=g) * 15  # float zeros (HQQ); integers behave the same
    return codes, scales, zeros


def impls_for(plugin: str, n: int, k: int) -> dict:
    from qcore import int4, lut4

    w = torch.randn(n, k) * 0.02
    w16 = w.bfloat16()
    out = {"f32": lambda x: torch.nn.functional.linear(x, w), "bf16": lambda x: torch.nn.functional.linear(x.bfloat16(), w16)}
    ops = __import__(f"qcore_{plugin}.ops", fromlist=["OPS"]).OPS
    codes, scales, zeros = random_int4(n, k)
    after = int4.Int4LutWeight(codes, scales, zeros, GROUP, ops)
    q8 = int4.Int4LutWeight(codes, scales, zeros, GROUP, ops)
    q8.int8_activations = lut4.supported_q8(GROUP, n, k)
    before = int4.Int4PackWeight(codes, scales, zeros, GROUP, compute_dtype=None if plugin == "awq" else torch.bfloat16)
    prefix = "int4 " if plugin == "torchao" else ""
    out.update({prefix + "after": after.matmul, prefix + "after-q8": q8.matmul, prefix + "before": before.matmul})
    if plugin == "hqq":
        out["hqq (upstream)"] = hqq_layer(w)
    if plugin == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        from qcore_torchao import kernels

        lin8 = torch.nn.Linear(k, n, bias=False)
        lin8.weight.data = w.clone()
        quantize_(lin8, Int8WeightOnlyConfig())
        k8 = kernels.cpu_kernel_for(lin8.weight)
        qdata, scale = lin8.weight.qdata, lin8.weight.scale.reshape(-1).bfloat16()
        ones = torch.ones(n, dtype=torch.bfloat16)
        out["int8 after"] = k8.matmul
        out["int8 before"] = lambda x: (torch.ops.aten._weight_int8pack_mm(x.bfloat16(), qdata, ones) * scale).float()
        out["int8 torchao (upstream)"] = lambda x: torch.nn.functional.linear(x, lin8.weight)
        lin4 = torch.nn.Linear(k, n, bias=False)
        lin4.weight.data = w.clone()
        quantize_(lin4, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(GROUP)))
        out["int4 torchao (upstream)"] = lambda x: torch.nn.functional.linear(x, lin4.weight)
        out["int4 after"] = kernels.cpu_kernel_for(lin4.weight).matmul  # the same class, from torchao's own weight
    return out


def hqq_layer(w: torch.Tensor):
    import contextlib
    import io

    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w.clone()
    with contextlib.redirect_stdout(io.StringIO()):
        layer = HQQLinear(lin, BaseQuantizeConfig(nbits=4, group_size=GROUP), compute_dtype=torch.float32, device="cpu")
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    return layer.forward


def measure(plugin: str, threads: int, rounds: int) -> dict[str, dict[str, tuple[float, float]]]:
    """{shape label: {implementation: (median ms, fastest ms)}}."""
    torch.set_num_threads(threads)
    shapes = {"5632x2048": [(5632, 2048)], "smollm2/token": SMOLLM2}
    results = {}
    for label, layer_shapes in shapes.items():
        layers = [impls_for(plugin, n, k) for n, k in layer_shapes]
        names = list(layers[0])
        xs = [torch.randn(1, k) for _, k in layer_shapes]
        times = {name: [] for name in names}
        with torch.no_grad():
            for name in names:  # warm up (scratch buffers, caches, first-call costs)
                for layer, x in zip(layers, xs, strict=True):
                    layer[name](x)
            for _ in range(rounds):
                for name in names:
                    start = time.perf_counter()
                    for layer, x in zip(layers, xs, strict=True):
                        layer[name](x)
                    times[name].append((time.perf_counter() - start) * 1e3)
        scale = BLOCKS if label == "smollm2/token" else 1
        results[label] = {name: (statistics.median(t) * scale, min(t) * scale) for name, t in times.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", required=True, choices=["awq", "hqq", "torchao"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    ops = __import__(f"qcore_{args.plugin}.ops", fromlist=["isa"])
    print(f"{args.plugin}: binary {ops.isa()}, torch {torch.__version__}")
    for threads in args.threads:
        for label, row in measure(args.plugin, threads, args.rounds).items():
            cells = ", ".join(f"{name} {med:.2f}/{low:.2f}" for name, (med, low) in row.items())
            print(f"threads={threads} {label} (ms, median/fastest): {cells}", flush=True)


if __name__ == "__main__":
    main()
