"""Measure AWQ on SmolLM2-135M: held-out perplexity (GPL-3) against float and round-to-nearest, and quantize time.

    python plugins/awq/scripts/measure_smollm2.py [--nsamples 16 --seqlen 256 --group-size 64 --autoawq]

Calibration windows come from qcore.testdata.calibration_text() (licences other than GPL-3); perplexity is
over the first ``--eval-tokens`` tokens of GPL-3 in windows of 256. ``--autoawq`` adds AutoAWQ 0.2.9 rows on
the same windows: as it runs on the CPU, and with its weight snapshot copied (what it does on a GPU; see
tests/test_awq_algorithm.py for the CPU aliasing bug). Prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import qcore
from qcore.testdata import calibration_text, reference_text, smollm2_checkpoint


def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int = 256) -> float:
    with torch.no_grad():
        losses = [model(ids[:, i:i + window], labels=ids[:, i:i + window]).loss for i in range(0, ids.shape[1], window)]
    return float(torch.exp(torch.stack(losses).mean()))


def autoawq_row(path, windows: list[torch.Tensor], group_size: int, copy_snapshot: bool) -> tuple[torch.nn.Module, float]:
    from awq import AutoAWQForCausalLM

    model = AutoAWQForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    state_dict = torch.nn.Module.state_dict
    if copy_snapshot:
        torch.nn.Module.state_dict = lambda self, *a, **k: {n: v.clone() for n, v in state_dict(self, *a, **k).items()}
    start = time.perf_counter()
    try:
        # export_compatible: scales and clips applied to the float weights, then AWQ's pseudo-quantizer below
        model.quantize(None, quant_config={"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"},
                       calib_data=[w[0].tolist() for w in windows], max_calib_seq_len=windows[0].shape[1],
                       max_calib_samples=len(windows), export_compatible=True)
    finally:
        torch.nn.Module.state_dict = state_dict
    seconds = time.perf_counter() - start
    from qcore_awq.quantizer import pseudo_quantize

    for module in model.model.model.layers.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = pseudo_quantize(module.weight.data, group_size)
    return model.model.eval(), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--autoawq", action="store_true")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from qcore.calibration import calibration_windows

    path = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    eval_ids = tokenizer(reference_text(), return_tensors="pt").input_ids[:, :args.eval_tokens]
    windows = calibration_windows(calibration_text(), tokenizer, args.nsamples, args.seqlen)
    config = qcore.config("awq", group_size=args.group_size)
    common = {"nsamples": args.nsamples, "seqlen": args.seqlen, "group_size": args.group_size,
              "eval_tokens": eval_ids.shape[1], "threads": torch.get_num_threads()}

    def report(row: str, model: torch.nn.Module, seconds: float | None) -> None:
        print(json.dumps({"row": row, "perplexity": round(perplexity(model, eval_ids), 4),
                          "quantize_s": None if seconds is None else round(seconds, 1), **common}), flush=True)

    report("float", qcore.load_quantized(path, progress=False), None)
    start = time.perf_counter()
    rtn = qcore.load_quantized(path, config, progress=False)
    report("qcore rtn (awq min/max, no search)", rtn, time.perf_counter() - start)
    del rtn
    model = qcore.load_quantized(path, progress=False)
    start = time.perf_counter()
    qcore.quantize(model, config, calibration=torch.cat(windows), progress=True)
    report("qcore awq", model, time.perf_counter() - start)
    del model
    if args.autoawq:
        for copy_snapshot, row in ((True, "autoawq 0.2.9 (weight snapshot copied, as on GPU)"), (False, "autoawq 0.2.9 (CPU)")):
            model, seconds = autoawq_row(path, windows, args.group_size, copy_snapshot)
            report(row, model, seconds)
            del model


if __name__ == "__main__":
    main()
