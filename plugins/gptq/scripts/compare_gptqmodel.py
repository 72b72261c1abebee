"""Quantize time of qcore GPTQ and gptqmodel on the same calibration windows, interleaved in one process.

Runs where both import (the gptq-interop env: ``tox -e gptq-interop --notest`` then its python, or
/work/venv-gptqmodel). SmolLM2-135M, 4-bit, group 128, sym, gptqmodel's defaults otherwise
(act_group_aware=True, desc_act=False) and qcore's (the same), 16 windows of 512 tokens drawn by
``qcore.calibration.calibration_windows`` from the bench's calibration text; perplexity on the bench
protocol (GPL-3, first 2048 tokens, windows of 512) with ``--ppl``.

    python plugins/gptq/scripts/compare_gptqmodel.py --rounds 2 --threads 2 [--ppl]

Prints one JSON line per run and the medians at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import torch  # noqa: E402

import qcore  # noqa: E402
import qcore.calibration  # noqa: E402
from qcore.testdata import calibration_text, reference_text, smollm2_checkpoint  # noqa: E402

PPL_TOKENS = 2048


def run_gptqmodel(windows: list[torch.Tensor], out: Path) -> tuple[float, torch.nn.Module]:
    from gptqmodel import GPTQModel, QuantizeConfig

    data = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    start = time.perf_counter()
    model = GPTQModel.load(str(smollm2_checkpoint()), QuantizeConfig(bits=4, group_size=128, desc_act=False, sym=True),
                           device="cpu")
    model.quantize(data, batch_size=4)
    seconds = time.perf_counter() - start
    model.save(str(out))
    from transformers import AutoModelForCausalLM, GPTQConfig

    cfg = GPTQConfig(bits=4, group_size=128, desc_act=False, sym=True, backend="torch")
    return seconds, AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32,
                                                         quantization_config=cfg).eval()


def run_qcore(windows: list[torch.Tensor]) -> tuple[float, torch.nn.Module]:
    start = time.perf_counter()
    model = qcore.load_quantized(smollm2_checkpoint(), progress=False)
    qcore.quantize(model, qcore.config("gptq", bits=4, group_size=128, sym=True), calibration=torch.cat(windows),
                   progress=False)
    return time.perf_counter() - start, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--ppl", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from qcore.calibration import calibration_windows
    from qcore.evaluate import perplexity

    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    windows = calibration_windows(calibration_text(), tokenizer, nsamples=args.nsamples, seqlen=args.seqlen)
    times: dict[str, list[float]] = {"qcore": [], "gptqmodel": []}
    for _ in range(args.rounds):
        for name in times:
            with tempfile.TemporaryDirectory() as tmp:
                seconds, model = run_gptqmodel(windows, Path(tmp)) if name == "gptqmodel" else run_qcore(windows)
                times[name].append(seconds)
                row = {"name": name, "threads": args.threads, "quantize_s": round(seconds, 1)}
                if name == "qcore":
                    row["profile"] = {k: round(v, 1) for k, v in qcore.calibration.last_profile().items()}
                if args.ppl:
                    row["perplexity"] = round(perplexity(model, tokenizer, reference_text(), max_tokens=PPL_TOKENS)["perplexity"], 3)
                print(json.dumps(row), flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"median_quantize_s": medians, "qcore_over_gptqmodel": round(medians["qcore"] / medians["gptqmodel"], 3)}))


if __name__ == "__main__":
    main()
