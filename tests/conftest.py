
import pytest
import torch

from qcore.plugins import reset_registry


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test discovers the installed plugins anew; throwaway plugins do not leak."""
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def tokens():
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
