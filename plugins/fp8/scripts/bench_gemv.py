"""One-layer decode timing for docs/methods/fp8.md (a script, not a test; ~1 minute on 2 CPU cores).

    python plugins/fp8/scripts/bench_gemv.py [--rounds 15]

For 5632x2048 and 2048x5632 (the 1.1B llama's MLP shapes), 1 row of x, 1 and 2 threads, all interleaved
in every round in this process: float32 F.linear, bfloat16 F.linear, FP8 before (dequantize into the reused
scratch + F.linear: the path without the binary) and FP8 after (torch.ops.qcore_fp8.gemv's checked
implementation, as Fp8Linear calls it); and 64 rows (prefill): float32, FP8 before and FP8 after (the C
dequantize into the reused scratch buffer, then F.linear). Prints the median ms per call, one JSON line per (threads, shape).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from qcore_fp8 import kernels, ops


def dequantize_c(q: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """What Fp8Linear does for more than 8 rows: the C dequantize into the reused scratch buffer."""
    out = kernels.SCRATCH.get(tuple(q.shape), torch.float32, q.device)
    ops.dequantize(q, inv, 128, 128, out)
    return out


def layer_cases(n: int, k: int, g: torch.Generator) -> dict[str, Callable[[], torch.Tensor]]:
    w = torch.randn(n, k, generator=g) * 0.02
    q, inv = kernels.quantize_blockwise(w, (128, 128))
    wb = w.bfloat16()
    x = torch.randn(1, k, generator=g)
    xb = x.bfloat16()
    x64 = torch.randn(64, k, generator=g)
    return {
        "f32": lambda: torch.nn.functional.linear(x, w),
        "bf16": lambda: torch.nn.functional.linear(xb, wb),
        "fp8_before": lambda: torch.nn.functional.linear(x, kernels.dequantize_into_scratch(q, inv, (128, 128), torch.float32)),
        "fp8_after": lambda: ops.gemv(x, q, inv, 128, 128),
        "prefill64_f32": lambda: torch.nn.functional.linear(x64, w),
        "prefill64_fp8_before": lambda: torch.nn.functional.linear(
            x64, kernels.dequantize_into_scratch(q, inv, (128, 128), torch.float32)),
        "prefill64_fp8_after": lambda: torch.nn.functional.linear(x64, dequantize_c(q, inv)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    shapes = {f"{n}x{k}": layer_cases(n, k, g) for n, k in ((5632, 2048), (2048, 5632))}
    times: dict[tuple[int, str, str], list[float]] = {}
    for _ in range(args.rounds):  # threads, shapes and paths interleaved in every round
        for threads in args.threads:
            torch.set_num_threads(threads)
            for shape, cases in shapes.items():
                for name, fn in cases.items():
                    fn()  # warm: the first call after a thread-count change pays for it
                    t0 = time.perf_counter()
                    fn()
                    times.setdefault((threads, shape, name), []).append((time.perf_counter() - t0) * 1e3)
    for threads in args.threads:
        for shape, cases in shapes.items():
            print(json.dumps({"threads": threads, "shape": shape, "isa": ops.isa(),
                              **{name: round(statistics.median(times[threads, shape, name]), 3) for name in cases}}),
                  flush=True)


if __name__ == "__main__":
    main()
