from pathlib import Path

import pytest
import torch

from qcore.plugins import reset_registry


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test discovers the installed plugins anew; throwaway plugins do not leak."""
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="session")
def tiny_model():
    from qcore.testdata import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def float_dir(tmp_path_factory, tiny_model) -> Path:
    path = tmp_path_factory.mktemp("float") / "tiny"
    tiny_model.save_pretrained(path)
    return path


@pytest.fixture
def tokens():
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
