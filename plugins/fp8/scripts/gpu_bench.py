"""Per-layer timings on a CUDA GPU (a script, not a test): bf16 F.linear vs Fp8Linear (Triton, and the torch
dequantize-into-scratch path), at 1 row (decode) and 64 rows, on the 1.1B llama's layer shapes. Prints JSON."""

from __future__ import annotations

import json
from functools import partial

import torch
import triton.testing

from qcore_fp8 import kernels, linear
from qcore_fp8.linear import Fp8Linear

SHAPES = {"q/o_proj": (2048, 2048), "gate/up_proj": (5632, 2048), "down_proj": (2048, 5632)}


def main() -> None:
    torch.manual_seed(0)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}))
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda") * 0.02
        q, inv = kernels.quantize_blockwise(w, (128, 128))
        layer = Fp8Linear(k, n, False, (128, 128), device="cuda")
        layer.weight, layer.weight_scale_inv = q, inv
        w_bf16 = w.bfloat16()
        for rows in (1, 64):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                bf16_ms = triton.testing.do_bench(partial(torch.nn.functional.linear, x, w_bf16))
                triton_ms = triton.testing.do_bench(partial(layer, x))
                original = linear.triton_kernels
                linear.triton_kernels = lambda: None  # the torch path: dequantize into the scratch buffer + F.linear
                torch_ms = triton.testing.do_bench(partial(layer, x))
                linear.triton_kernels = original
                ref = torch.nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
                err = float((layer(x).float() - ref).abs().max() / ref.abs().max())
            print(json.dumps({"layer": name, "shape": [n, k], "rows": rows, "bf16_ms": round(bf16_ms, 4),
                              "fp8_triton_ms": round(triton_ms, 4), "fp8_torch_scratch_ms": round(torch_ms, 4),
                              "triton_rel_err_vs_fp32": err}))


if __name__ == "__main__":
    main()
