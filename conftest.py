"""Loaded by pytest before any test module, for every tox env.

Without a CUDA GPU, the Triton kernel tests run on CPU under Triton's interpreter. Triton reads
TRITON_INTERPRET when it is first imported (its own library functions are decorated then), so it
is set here, before anything can import triton.
"""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny random llama (2 layers, hidden 64) built from a config: no download."""
    from qcore.testdata import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def float_dir(tmp_path_factory, tiny_model) -> Path:
    """``tiny_model`` saved by transformers' save_pretrained: a float checkpoint qcore did not write."""
    path = tmp_path_factory.mktemp("float") / "tiny"
    tiny_model.save_pretrained(path)
    return path
