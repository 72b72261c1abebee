"""Measure qcore-plugin-torchao on SmolLM2-135M against transformers + torchao and float32 (a script, not a test).

    python plugins/torchao/scripts/measure.py [--preset torchao-int8wo] [--ppl-tokens 4096] [--new-tokens 32]

Each row runs in its own process, so the load peak (``ru_maxrss``) is that load's alone:

- ``float32``: transformers, no quantization;
- ``transformers+torchao``: ``from_pretrained(float, quantization_config=TorchAoConfig(<config>))``;
- ``qcore (torchao kernels)``: ``qcore.load_quantized`` with the plugin's CPU decode kernels off;
- ``qcore``: the same with them on (the default).

Decode: greedy, batch 1, KV cache, median (and minimum) ms per new token. Perplexity: the
fixed protocol of qcore.evaluate on the GPL-3 text. Prints one JSON line per row and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

IMPLS = ("float32", "transformers+torchao", "qcore (torchao kernels)", "qcore")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def decode_times(model, tokenizer, new_tokens: int, warmup: int = 4) -> dict:
    """Greedy decoding at batch 1 with a KV cache, each token timed: median and minimum ms per token.

    The median (not the mean of qcore.evaluate.decode_latency) because a shared machine stalls some tokens.
    """
    import statistics

    import torch

    ids = tokenizer("The licence gives you the freedom to", return_tensors="pt").input_ids
    times = []
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for i in range(warmup + new_tokens):
            start = time.perf_counter()
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            if i >= warmup:
                times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def run_row(impl: str, preset: str, ppl_tokens: int, new_tokens: int, threads: int) -> dict:
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import qcore
    from qcore.evaluate import perplexity
    from qcore.testdata import reference_text, smollm2_checkpoint
    from qcore_torchao.format import flatten_weight
    from qcore_torchao.linear import TorchAoLinear

    src = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.zeros(1)  # torch's own start-up allocations before the baseline
    base = _current_rss_mb()
    start = time.perf_counter()
    if impl == "float32":
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    elif impl == "transformers+torchao":
        from transformers import TorchAoConfig

        config = qcore.plugins.preset_config(preset)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32,
                                                     quantization_config=TorchAoConfig(config.ao_config()))
    else:
        model = qcore.load_quantized(src, quantization_config=preset, progress=False)
        TorchAoLinear.fast_cpu = impl == "qcore"
    load_s = time.perf_counter() - start
    peak = _rss_mb()
    model.eval()
    size = 0
    seen = set()
    for tensor in model.state_dict().values():
        parts = flatten_weight(tensor).values() if hasattr(tensor, "tensor_data_names") else [tensor]
        for t in parts:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if key not in seen:
                seen.add(key)
                size += t.numel() * t.element_size()
    decode = decode_times(model, tokenizer, new_tokens)
    ppl = perplexity(model, tokenizer, reference_text(), max_tokens=ppl_tokens)
    return {"impl": impl, "preset": preset, "size_mb": size / 1e6, "load_s": load_s,
            "load_peak_mb": peak - base, "base_rss_mb": base, "decode_ms_per_token": decode["median_ms"], "decode_min_ms": decode["min_ms"],
            "perplexity": ppl["perplexity"], "ppl_tokens": ppl["tokens"], "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="torchao-int8wo")
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine more threads measure the contention)")
    parser.add_argument("--impl", choices=IMPLS, help="run one row in this process (used by the driver)")
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(run_row(args.impl, args.preset, args.ppl_tokens, args.new_tokens, args.threads)))
        return
    rows = []
    for impl in IMPLS:
        cmd = [sys.executable, __file__, "--impl", impl, "--preset", args.preset,
               "--ppl-tokens", str(args.ppl_tokens), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(out, flush=True)
        rows.append(json.loads(out))
    print("\n| row | size MB | load peak MB | decode ms/token (median) | decode min | perplexity |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['impl']} | {r['size_mb']:.0f} | {r['load_peak_mb']:.0f} | {r['decode_ms_per_token']:.1f} | {r['decode_min_ms']:.1f} | {r['perplexity']:.4f} |")


if __name__ == "__main__":
    main()
