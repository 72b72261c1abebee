"""Greedy decode ms/token for docs/methods/fp8.md (a script, not a test; minutes on 2 CPU cores).

    python plugins/fp8/scripts/bench_decode.py smollm2 [--rounds 7] [--tokens 8]
    python plugins/fp8/scripts/bench_decode.py big      # benchmarks/bench.py's synthetic ~1.1B llama (written once)

Rows, all loaded in this one process and timed in rounds that interleave rows and thread counts (1 and 2): float32 and
bfloat16 (transformers), fp8-block128 computing in float32 and in bfloat16 (qcore.load_quantized, FP8
quantized while loading), each FP8 model "after" (the plugin's C GEMV) and "before" (the same model
with the binary switched off: dequantize each weight per forward, then F.linear, as before the kernel).
Each round decodes --tokens tokens after a 6-token prompt and 2 warm-up tokens (KV cache, batch 1);
prints the median ms/token per row, one JSON line per thread count.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def source(which: str) -> Path:
    if which == "smollm2":
        from qcore.testdata import smollm2_checkpoint

        return Path(smollm2_checkpoint())
    from qcore.testdata import cache_dir

    benchmarks = Path(__file__).resolve().parents[3] / "benchmarks"
    sys.path.insert(0, str(benchmarks))  # bench.py imports its neighbours (upstream.py)
    spec = importlib.util.spec_from_file_location("bench", benchmarks / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    folder = cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return bench.synthetic_llama(folder)


def decode_ms(model: torch.nn.Module, tokens: int) -> float:
    ids = torch.arange(6).unsqueeze(0) + 100
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for step in range(2 + tokens):
            if step == 2:
                start = time.perf_counter()
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) * 1e3 / tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=["smollm2", "big"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--no-bf16-fp8", action="store_true", help="skip fp8 computing in bfloat16")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    import qcore
    from qcore_fp8 import ops

    src = source(args.model)
    models = {"f32": AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval(),
              "bf16": AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval(),
              "fp8": qcore.load_quantized(src, "fp8-block128", progress=False).eval()}
    if not args.no_bf16_fp8:
        models["fp8_bf16"] = qcore.load_quantized(src, "fp8-block128", torch_dtype=torch.bfloat16, progress=False).eval()
    binary = ops.library
    rows = {}
    for name, model in models.items():
        if name.startswith("fp8"):
            rows[name + "_before"] = (model, lambda: None)
            rows[name + "_after"] = (model, binary)
        else:
            rows[name] = (model, binary)
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):  # thread counts and rows interleaved in every round
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, (model, library) in rows.items():
                ops.library = library  # "before": Fp8Linear sees no binary and runs the torch path
                try:
                    times.setdefault((threads, name), []).append(decode_ms(model, args.tokens))
                finally:
                    ops.library = binary
    for threads in args.threads:
        print(json.dumps({"model": args.model, "threads": threads, "isa": ops.isa(), "rounds": args.rounds,
                          "ms_per_token": {name: round(statistics.median(times[threads, name]), 2) for name in rows}}),
              flush=True)

if __name__ == "__main__":
    main()
