"""Quantize time of qcore's HQQ solver vs hqq's Quantizer.quantize on SmolLM2-135M's linear weights
(4-bit, g64, axis 1), layer by layer, interleaved so both see the same machine load.

    python plugins/hqq/bench/quantize_time.py [--blocks N]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=30)
    args = parser.parse_args()
    from hqq.core.quantize import Quantizer
    from safetensors import safe_open

    from qcore.testdata import smollm2_checkpoint
    from qcore_hqq import quantizer

    ours = theirs = 0.0
    count = 0
    with safe_open(str(smollm2_checkpoint() / "model.safetensors"), "pt") as f:
        names = [n for n in f.keys() if n.endswith("proj.weight") and int(n.split(".")[2]) < args.blocks]
        for name in names:
            w = f.get_tensor(name)
            start = time.perf_counter()
            q = quantizer.quantize(w, 4, 64, 1, round_zero=True)
            ours += time.perf_counter() - start
            start = time.perf_counter()
            ref_q, meta = Quantizer.quantize(w, nbits=4, group_size=64, axis=1, round_zero=True, bitpack=False, device="cpu")
            theirs += time.perf_counter() - start
            assert torch.equal(q.W_q, ref_q) and torch.equal(q.zero, meta["zero"]), name
            count += 1
    print(f"{count} layers: qcore {ours:.1f} s, hqq {theirs:.1f} s, ratio {theirs / ours:.2f}x (bit-identical results)")


if __name__ == "__main__":
    main()
