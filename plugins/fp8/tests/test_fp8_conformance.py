from qcore.testing import PluginConformance


class TestBlock128(PluginConformance):
    """The default DeepSeek block; every layer of the tiny llama (64/128 wide) is one edge block."""

    preset = "fp8-block128"
    max_relative_error = 0.05


class TestBlock128Ue8m0(PluginConformance):
    preset = "fp8-block128-ue8m0"
    max_relative_error = 0.05


class TestPerTensor(PluginConformance):
    preset = "fp8-per-tensor"
    max_relative_error = 0.05


class TestSmallBlocksWithBias(PluginConformance):
    """Blocks of 32x48: full and edge blocks in one layer; biases on the attention and MLP projections."""

    model_overrides = {"attention_bias": True, "mlp_bias": True}
    max_relative_error = 0.05

    def make_config(self):
        import qcore

        return qcore.config("fp8", weight_block_size=[32, 48])

