"""The upstream rows of the bench: row name -> a function that loads and quantizes SmolLM2 with that library.

Each loader takes the float checkpoint directory and returns a float32-compute model quantized by
the upstream library alone (no qcore code), as its users would run it on CPU. Add a row by adding a
function here; a library that is not installed or fails is reported as that row's error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def transformers_bnb(src: Path, four_bit: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)
           if four_bit else BitsAndBytesConfig(load_in_8bit=True))
    return AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, dtype=torch.float32).eval()


def _float_model(src: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()


def hqq_4bit_g64(src: Path) -> Any:
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    model = _float_model(src)
    cfg = BaseQuantizeConfig(nbits=4, group_size=64)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name != "lm_head":
                setattr(parent, child_name, HQQLinear(child, cfg, compute_dtype=torch.float32, device="cpu"))
    return model


def torchao_int8_weight_only(src: Path) -> Any:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = _float_model(src)
    quantize_(model, Int8WeightOnlyConfig())
    return model


def quanto_int8(src: Path) -> Any:
    from optimum.quanto import freeze, qint8, quantize

    model = _float_model(src)
    quantize(model, weights=qint8)
    freeze(model)
    return model


UPSTREAM_LOADERS = {
    "transformers-bnb-nf4": lambda src: transformers_bnb(src, four_bit=True),
    "transformers-bnb-int8": lambda src: transformers_bnb(src, four_bit=False),
    "hqq-4bit-g64": hqq_4bit_g64,
    "torchao-int8-weight-only": torchao_int8_weight_only,
    "quanto-int8": quanto_int8,
}
