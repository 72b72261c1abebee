from qcore.testing import PluginConformance


class TestExampleConformance(PluginConformance):
    preset = "example-int8"
    max_relative_error = 0.02
