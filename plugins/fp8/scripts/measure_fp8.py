"""Measurements for docs/methods/fp8.md (a script, not a test; ~3 minutes on 2 CPU cores).

    python plugins/fp8/scripts/measure_fp8.py [--skip-smollm2] [--skip-transformers] [--decode-only]

1. SmolLM2-135M (qcore.testdata): perplexity on GPL-3 (qcore.evaluate.perplexity, first 2048 tokens, windows
   of 512) and greedy decode ms/token (qcore.evaluate.decode_latency, 16 new tokens) for float32, bfloat16,
   fp8-block128 computing in float32 and in bfloat16; peak RSS of quantizing on the fly, each in its own process.
2. What transformers does with fine-grained FP8 on this CPU machine: quantize on the fly, load a pre-quantized
   checkpoint (dtype in memory), save it again (quantization_config, tensor dtypes), and dequantize
   non-divisible layers (max error against the ceil-division truth).
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def smollm2_worker(kind: str, decode_only: bool) -> dict:
    import torch

    import qcore
    from qcore.evaluate import decode_latency, perplexity
    from qcore.testdata import reference_text, smollm2_checkpoint

    torch.manual_seed(0)
    src = smollm2_checkpoint()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    dtype = torch.bfloat16 if kind.endswith("bf16") else torch.float32
    before = _peak_rss_mb()
    if kind.startswith("fp8"):
        model = qcore.load_quantized(src, "fp8-block128", torch_dtype=dtype, progress=False)
    else:
        model = qcore.load_quantized(src, torch_dtype=dtype, progress=False)
    load_peak = _peak_rss_mb()
    result = {"model": "SmolLM2-135M", "kind": kind, "load_peak_rss_mb": round(load_peak, 1),
              "rss_before_load_mb": round(before, 1)}
    result["threads"] = torch.get_num_threads()
    if not decode_only:
        result["perplexity"] = round(perplexity(model, tokenizer, reference_text(), max_tokens=2048)["perplexity"], 4)
    result["decode_ms_per_token"] = round(decode_latency(model, tokenizer, new_tokens=16)["ms_per_token"], 2)
    return result


def transformers_worker() -> list[dict]:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    from qcore.testdata import tiny_llama
    from qcore_fp8.kernels import dequantize_blockwise, quantize_blockwise

    out = [{"transformers": transformers.__version__, "torch": torch.__version__, "cuda": torch.cuda.is_available()}]
    work = Path(tempfile.mkdtemp())
    model = tiny_llama(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    model.save_pretrained(work / "float")
    try:
        AutoModelForCausalLM.from_pretrained(work / "float", quantization_config=FineGrainedFP8Config())
        out.append({"case": "quantize on the fly on CPU", "result": "loaded"})
    except Exception as exc:  # noqa: BLE001 - the point is to record what happens
        out.append({"case": "quantize on the fly on CPU", "result": f"{type(exc).__name__}: {exc}"})
    # a pre-quantized checkpoint (128x128 blocks divide every layer), written with qcore and read by transformers
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for name in [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]:
        q, inv = quantize_blockwise(state.pop(f"{name}.weight"), (128, 128))
        state[f"{name}.weight"], state[f"{name}.weight_scale_inv"] = q, inv
    (work / "fp8").mkdir()
    save_file(state, str(work / "fp8" / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["LlamaForCausalLM"]
    config["quantization_config"] = json.loads(FineGrainedFP8Config().to_json_string())
    (work / "fp8" / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(work / "fp8")
    q_proj = loaded.model.layers[0].self_attn.q_proj
    out.append({"case": "load FP8 checkpoint on CPU", "q_proj": type(q_proj).__name__, "weight_dtype": str(q_proj.weight.dtype),
                "bytes_per_weight": q_proj.weight.element_size()})
    loaded.save_pretrained(work / "resaved")
    saved_config = json.loads((work / "resaved" / "config.json").read_text())
    saved = load_file(str(next((work / "resaved").glob("*.safetensors"))))
    out.append({"case": "save it again", "quantization_config_written": "quantization_config" in saved_config,
                "q_proj_weight_dtype": str(saved["model.layers.0.self_attn.q_proj.weight"].dtype),
                "weight_scale_inv_written": "model.layers.0.self_attn.q_proj.weight_scale_inv" in saved})
    torch.manual_seed(0)
    for shape in [(300, 200), (384, 300), (200, 300)]:
        w = torch.randn(*shape) * 0.05
        q, inv = quantize_blockwise(w, (128, 128))
        truth = dequantize_blockwise(q, inv, (128, 128))
        try:
            theirs = Fp8Dequantize(None)._dequantize_one(q, inv, output_dtype=torch.float32)
            err = float((theirs - truth).abs().max())
            out.append({"case": f"dequantize {list(shape)} with 128x128 blocks", "max_abs_error": round(err, 4),
                        "max_abs_weight": round(float(truth.abs().max()), 4)})
        except Exception as exc:  # noqa: BLE001
            out.append({"case": f"dequantize {list(shape)} with 128x128 blocks", "result": f"{type(exc).__name__}: {exc}"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--decode-only", action="store_true", help="skip the perplexity runs")
    args = parser.parse_args()
    if args.worker == "transformers":
        print(json.dumps(transformers_worker()))
        return
    if args.worker:
        print(json.dumps(smollm2_worker(args.worker, args.decode_only)))
        return
    jobs = [] if args.skip_smollm2 else ["float32", "bf16", "fp8", "fp8-bf16"]
    jobs += [] if args.skip_transformers else ["transformers"]
    for job in jobs:
        command = [sys.executable, __file__, "--worker", job] + (["--decode-only"] if args.decode_only else [])
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in run.stdout.splitlines() if line.startswith(("{", "["))]
        print(lines[-1] if lines else json.dumps({"job": job, "error": run.stderr[-2000:]}), flush=True)


if __name__ == "__main__":
    main()
