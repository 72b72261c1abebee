"""Measure qcore's HQQ against hqq's own on SmolLM2-135M (a script, not a test).

    python plugins/hqq/bench/measure_hqq.py [--out results.json] [--skip-transformers]

Rows: perplexity on the GPL-3 text (qcore.evaluate.perplexity: 4096 tokens, 512-token
windows), quantize time (float checkpoint on disk -> quantized model in memory), and greedy
decode ms/token at batch 1 with a KV cache (qcore.evaluate.decode_latency, 32 tokens), for
qcore (int4 GEMM; and its exact float32 reference), hqq 0.2.8 (its PYTORCH backend on the CPU)
and the float model in float32 and bfloat16. Then what transformers does with HqqConfig and
with an HQQ checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import torch


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def decode_ms(model, tokenizer, repeats: int = 3) -> float:
    from qcore.evaluate import decode_latency

    return min(decode_latency(model, tokenizer)["ms_per_token"] for _ in range(repeats))


def hqq_model(path: Path, dtype: torch.dtype):
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            AutoHQQHFModel.quantize_model(model, BaseQuantizeConfig(nbits=4, group_size=64, axis=1),
                                          compute_dtype=dtype, device="cpu")
        return model

    return timed(run)


def transformers_behaviour(float_dir: Path, qcore_ckpt: Path, qcore_model, tokenizer) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM, HqqConfig

    out: dict = {"transformers": transformers.__version__}
    try:
        AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=HqqConfig(nbits=4, group_size=64))
        out["quantize_with_HqqConfig"] = "loaded"
    except Exception as exc:  # noqa: BLE001 - we report what it does
        out["quantize_with_HqqConfig"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        model = AutoModelForCausalLM.from_pretrained(qcore_ckpt)
        ids = tokenizer("The licence gives you the freedom to", return_tensors="pt").input_ids
        with torch.no_grad():
            theirs, ours = model(ids).logits, qcore_model(ids).logits
        layer = model.model.layers[0].self_attn.q_proj
        out["load_hqq_checkpoint"] = {
            "q_proj_type": type(layer).__name__,
            "relative_logit_difference_to_qcore": float((theirs - ours).norm() / ours.norm()),
        }
        from qcore.evaluate import perplexity
        from qcore.testdata import reference_text

        out["load_hqq_checkpoint"]["perplexity"] = perplexity(model, tokenizer, reference_text())["perplexity"]
    except Exception as exc:  # noqa: BLE001
        out["load_hqq_checkpoint"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import qcore
    from qcore.evaluate import perplexity
    from qcore.testdata import reference_text, smollm2_checkpoint
    from qcore_hqq.linear import HqqLinear

    path = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = reference_text()
    rows: dict = {"threads": torch.get_num_threads()}

    ours, seconds = timed(lambda: qcore.load_quantized(path, quantization_config="hqq-4bit-g64", progress=False))
    rows["qcore"] = {"quantize_s": seconds}
    print(rows, flush=True)
    rows["qcore"]["decode_ms"] = decode_ms(ours, tokenizer)
    print(rows, flush=True)
    rows["qcore"]["perplexity"] = perplexity(ours, tokenizer, text)["perplexity"]
    print(rows, flush=True)
    HqqLinear.use_fast_kernels = False
    rows["qcore_reference_fp32"] = {"perplexity": perplexity(ours, tokenizer, text)["perplexity"]}
    HqqLinear.use_fast_kernels = True
    print(rows, flush=True)

    theirs, seconds = hqq_model(path, torch.float32)
    rows["hqq"] = {"quantize_s": seconds}
    print(rows, flush=True)
    rows["hqq"]["decode_ms"] = decode_ms(theirs, tokenizer, repeats=1)
    print(rows, flush=True)
    rows["hqq"]["perplexity"] = perplexity(theirs, tokenizer, text)["perplexity"]
    del theirs
    print(json.dumps(rows, indent=1), flush=True)

    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        rows[name] = {"perplexity": perplexity(model, tokenizer, text)["perplexity"], "decode_ms": decode_ms(model, tokenizer)}
        del model
    ours_bf16 = qcore.load_quantized(path, quantization_config="hqq-4bit-g64", torch_dtype=torch.bfloat16, progress=False)
    rows["qcore_bf16"] = {"perplexity": perplexity(ours_bf16, tokenizer, text)["perplexity"],
                          "decode_ms": decode_ms(ours_bf16, tokenizer)}
    del ours_bf16
    print(json.dumps(rows, indent=1), flush=True)

    if not args.skip_transformers:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = qcore.save_quantized(ours, Path(tmp) / "hqq", tokenizer=tokenizer)
            rows["transformers"] = transformers_behaviour(path, ckpt, ours, tokenizer)
    print(json.dumps(rows, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
