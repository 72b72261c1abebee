import torch

import qcore
from qcore.testing import PluginConformance


class TestGPTQRoundToNearest(PluginConformance):
    """On-the-fly loading of a float checkpoint: round-to-nearest in the GPTQ format."""

    preset = "gptq-w4g128"
    max_relative_error = 0.2


class TestGPTQCalibrated(PluginConformance):
    """Calibrated GPTQ with act-order through qcore.quantize."""

    preset = "gptq-w4g128-act"
    max_relative_error = 0.2

    def quantize_float_checkpoint(self, float_dir, config):
        model = qcore.load_quantized(float_dir, progress=False)
        ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
        return qcore.quantize(model, config, calibration=ids, progress=False)


class TestGPTQ8bit(PluginConformance):
    preset = "gptq-w8"
    max_relative_error = 0.02
