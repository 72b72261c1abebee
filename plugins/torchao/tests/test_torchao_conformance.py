from qcore.testing import PluginConformance


class TestInt8WeightOnly(PluginConformance):
    preset = "torchao-int8wo"
    max_relative_error = 0.02


class TestFloat8WeightOnly(PluginConformance):
    preset = "torchao-fp8wo"
    max_relative_error = 0.06


class TestInt8DynamicActivationInt8Weight(PluginConformance):
    preset = "torchao-int8dq"
    max_relative_error = 0.03


class TestIntxWeightOnlyInt4(PluginConformance):
    preset = "torchao-intx4-g32"
    max_relative_error = 0.15


class TestInt8WeightOnlyWithBiases(PluginConformance):
    preset = "torchao-int8wo"
    max_relative_error = 0.02
    model_overrides = {"attention_bias": True, "mlp_bias": True}


class TestIntxInt4WithBiases(PluginConformance):
    preset = "torchao-intx4-g32"
    max_relative_error = 0.15
    model_overrides = {"attention_bias": True, "mlp_bias": True}


class TestInt4WeightOnly(PluginConformance):
    preset = "torchao-int4wo-g64"
    max_relative_error = 0.15


class TestInt4WeightOnlyWithBiases(PluginConformance):
    preset = "torchao-int4wo-g64"
    max_relative_error = 0.15
    model_overrides = {"attention_bias": True, "mlp_bias": True}
