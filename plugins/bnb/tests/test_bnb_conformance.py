from qcore.testing import PluginConformance


class TestNF4(PluginConformance):
    preset = "bnb-nf4"
    max_relative_error = 0.15


class TestFP4(PluginConformance):
    preset = "bnb-fp4"
    max_relative_error = 0.25


class TestInt8(PluginConformance):
    preset = "bnb-int8"
    max_relative_error = 0.02
