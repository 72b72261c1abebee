"""Helpers shared by the bnb tests: transformers + bitsandbytes as the oracle."""

import torch


def bnb_config(kind: str):
    from transformers import BitsAndBytesConfig

    return {
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32),
        "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
    }[kind]


QCORE_PRESET = {"nf4": "bnb-nf4", "fp4": "bnb-fp4", "int8": "bnb-int8"}


def upstream_model(path, kind=None, fp32_kernel=True):
    """transformers + bitsandbytes, with bitsandbytes' fp32 CPU path (its AVX512-BF16 kernel computes in bf16)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"quantization_config": bnb_config(kind)} if kind else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    if fp32_kernel:
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model
