"""Where GPTQ calibration spends its time on SmolLM2-135M, per phase, and what each variant costs in perplexity.

Variants run in interleaved rounds in one process (the machine is shared and noisy: compare medians):

- ``before``: the driver as it was before issue 17's speed work: the block runs as it is (float32,
  the quantized GPTQ modules in the forwards), one ``X^T X`` and one solve per linear (q/k/v, gate/up
  each their own); the solver's inner loop is the current one;
- ``float32``: ``calibration_dtype="float32"`` (a float32 copy of each block runs, quantized linears as
  their dequantized weights, one ``X^T X`` per input tensor, linears with one Hessian solved stacked);
- ``bfloat16``: the same in bfloat16 (the Hessians and the solver stay float32);
- ``auto``: the default.

    python plugins/gptq/scripts/profile_calibration.py --nsamples 16 --seqlen 512 --threads 1 --rounds 2 --ppl

Prints one JSON line per run: the variant, threads, seconds per phase (``qcore.calibration.last_profile()``)
and, with ``--ppl``, the perplexity on the bench protocol (GPL-3, first 2048 tokens, windows of 512).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from collections.abc import Iterator

import torch

import qcore
import qcore.calibration
from qcore.testdata import calibration_text, reference_text, smollm2_checkpoint

PPL_TOKENS = 2048  # benchmarks/bench.py


@contextlib.contextmanager
def before_issue_17() -> Iterator[None]:
    """The old driver and Hessians: no compute copy of the block, one product per linear (so no stacked solves)."""
    import itertools

    from qcore_gptq import hessian

    saved = qcore.calibration.compute_dtype, hessian.shared_gram
    numbers = itertools.count(-1, -1)
    qcore.calibration.compute_dtype = lambda config, device: None
    hessian.shared_gram = lambda inputs: (hessian.gram(inputs.reshape(-1, inputs.shape[-1])), next(numbers))
    try:
        yield
    finally:
        qcore.calibration.compute_dtype, hessian.shared_gram = saved


def run(variant: str, args: argparse.Namespace, tokenizer) -> dict:
    config = qcore.config("gptq", bits=args.bits, group_size=128, desc_act=args.desc_act,
                          act_group_aware=not args.no_gar,
                          calibration_dtype="float32" if variant == "before" else variant)
    model = qcore.load_quantized(smollm2_checkpoint(), progress=False)
    context = before_issue_17() if variant == "before" else contextlib.nullcontext()
    with context:
        qcore.quantize(model, config, calibration=calibration_text(), tokenizer=tokenizer, nsamples=args.nsamples,
                       seqlen=args.seqlen, progress=False)
    out = {"variant": variant, "threads": torch.get_num_threads(), "nsamples": args.nsamples, "seqlen": args.seqlen,
           "profile": {k: round(v, 2) for k, v in qcore.calibration.last_profile().items()}}
    if args.ppl:
        from qcore.evaluate import perplexity

        out["perplexity"] = round(perplexity(model, tokenizer, reference_text(), max_tokens=PPL_TOKENS)["perplexity"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--desc-act", action="store_true")
    parser.add_argument("--no-gar", action="store_true", help="act_group_aware=False")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["before", "float32", "bfloat16"])
    parser.add_argument("--ppl", action="store_true", help="also measure perplexity (bench protocol)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    results = []
    for _ in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for variant in args.variants:
                result = run(variant, args, tokenizer)
                results.append(result)
                print(json.dumps(result), flush=True)
    for threads in args.threads:
        for variant in args.variants:
            mine = [r["profile"] for r in results if r["variant"] == variant and r["threads"] == threads]
            median = {k: round(statistics.median(p.get(k, 0.0) for p in mine), 2) for k in mine[0]}
            print(json.dumps({"median_of": len(mine), "variant": variant, "threads": threads, "profile": median}),
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
