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


def quanto_int8(src: Path) -> Any:
    from optimum.quanto import freeze, qint8, quantize

    model = _float_model(src)
    quantize(model, weights=qint8)
    freeze(model)
    return model


def transformers_torchao(src: Path, name: str) -> Any:
    """transformers + torchao quantizing while loading (TorchAoConfig), as its users run it."""
    import torch
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerGroup,
    )
    from transformers import AutoModelForCausalLM, TorchAoConfig

    configs = {"int8wo": Int8WeightOnlyConfig, "fp8wo": Float8WeightOnlyConfig, "int8dq": Int8DynamicActivationInt8WeightConfig,
               "intx4-g32": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))}
    return AutoModelForCausalLM.from_pretrained(src, quantization_config=TorchAoConfig(quant_type=configs[name]()),
                                                dtype=torch.float32).eval()


def autoawq_w4g64(src: Path) -> Any:
    """AutoAWQ 0.2.9's search (scales and clips) on the bench's calibration windows, then its min/max 4-bit g64
    quantizer (its own pseudo_quantize_tensor) applied in place (export_compatible): a fake-quantized float model, for perplexity and time only.
    Its weight snapshot is copied as it is on a GPU (on the CPU AutoAWQ's snapshot aliases the live weights,
    plugins/awq/tests/test_awq_algorithm.py)."""
    import torch
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    from qcore.calibration import calibration_windows
    from qcore.testdata import calibration_text

    windows = calibration_windows(calibration_text(), AutoTokenizer.from_pretrained(src), nsamples=16, seqlen=512)
    model = AutoAWQForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    state_dict = torch.nn.Module.state_dict
    torch.nn.Module.state_dict = lambda self, *a, **k: {n: v.clone() for n, v in state_dict(self, *a, **k).items()}
    try:
        model.quantize(None, quant_config={"zero_point": True, "q_group_size": 64, "w_bit": 4, "version": "GEMM"},
                       calib_data=[w[0].tolist() for w in windows], max_calib_seq_len=windows[0].shape[1],
                       max_calib_samples=len(windows), export_compatible=True)
    finally:
        torch.nn.Module.state_dict = state_dict
    for module in model.model.model.layers.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = model.quantizer.pseudo_quantize_tensor(module.weight.data)[0]
    return model.model.eval()


UPSTREAM_LOADERS = {
    "transformers-bnb-nf4": lambda src: transformers_bnb(src, four_bit=True),
    "transformers-bnb-int8": lambda src: transformers_bnb(src, four_bit=False),
    "autoawq-w4g64": autoawq_w4g64,
    "hqq-lib-4bit-g64": hqq_4bit_g64,
    **{f"transformers-torchao-{name}": (lambda src, name=name: transformers_torchao(src, name))
       for name in ("int8wo", "int8dq", "intx4-g32", "fp8wo")},
    "quanto-int8": quanto_int8,
}
# rows whose model holds float weights with quantized values: perplexity and quantize time only
FAKE_QUANT = {"autoawq-w4g64"}
