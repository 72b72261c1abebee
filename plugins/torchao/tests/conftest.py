"""Shared fixtures: the checkpoints transformers + torchao write for the tiny llama of the root conftest (the oracle)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchao_helpers import hf_load, hf_quantize, torchao_configs


@pytest.fixture(scope="session")
def tiny_float_model(float_dir: Path):
    return hf_load(float_dir)


@pytest.fixture(scope="session")
def hf_checkpoints(float_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """preset name -> directory of the checkpoint transformers + torchao wrote for the same config."""
    root = tmp_path_factory.mktemp("hf-torchao")
    out = {}
    for name, ao_config in torchao_configs().items():
        hf_quantize(float_dir, ao_config, root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
