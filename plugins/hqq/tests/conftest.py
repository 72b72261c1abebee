import pytest


@pytest.fixture(scope="session")
def tiny_float_dir(tmp_path_factory):
    from qcore.testdata import tiny_llama

    path = tmp_path_factory.mktemp("hqq") / "float"
    tiny_llama().save_pretrained(path)
    return path
