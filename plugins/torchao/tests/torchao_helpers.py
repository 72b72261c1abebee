"""Helpers shared by the tests: the torchao configs under test and transformers + torchao as the oracle."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def torchao_configs() -> dict:
    """The configs under test, built with torchao directly (independently of the plugin's presets)."""
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup

    return {
        "torchao-int8wo": Int8WeightOnlyConfig(),
        "torchao-fp8wo": Float8WeightOnlyConfig(),
        "torchao-int8dq": Int8DynamicActivationInt8WeightConfig(),
        "torchao-intx4-g32": IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
    }


PRESETS = ["torchao-int8wo", "torchao-fp8wo", "torchao-int8dq", "torchao-intx4-g32"]


def hf_quantize(float_dir: Path, ao_config, out: Path, dtype=torch.float32, **save_kwargs):
    """Quantize with transformers + torchao and save_pretrained; returns the transformers model."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=TorchAoConfig(ao_config), dtype=dtype)
        model.save_pretrained(out, **save_kwargs)
    return model.eval()


def hf_load(path: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
