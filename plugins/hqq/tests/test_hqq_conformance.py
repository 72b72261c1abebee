import pytest

from qcore.testing import PluginConformance


class TestHqq4bit(PluginConformance):
    """The default recipe, on a model with biases and a tied output head."""

    preset = "hqq-4bit-g64"
    max_relative_error = 0.15
    model_overrides = {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}


@pytest.mark.slow
class TestHqq3bit(PluginConformance):
    preset = "hqq-3bit-g64"
    max_relative_error = 0.3


@pytest.mark.slow
class TestHqq8bitAxis0(PluginConformance):
    def make_config(self):
        import qcore

        return qcore.config("hqq", nbits=8, group_size=64, axis=0)

    max_relative_error = 0.02
