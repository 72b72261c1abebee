import torch

import qcore
from qcore.testing import PluginConformance


def calibrate(float_dir, config):
    model = qcore.load_quantized(float_dir, progress=False)
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    return qcore.quantize(model, config, calibration=ids, progress=False)


class TestAWQRoundToNearest(PluginConformance):
    """On-the-fly loading of a float checkpoint: AWQ's min/max quantizer without the search, GEMM layout."""

    preset = "awq-w4g64"
    max_relative_error = 0.2


class TestAWQCalibrated(PluginConformance):
    """Calibrated AWQ (scale and clip search) through qcore.quantize, GEMM layout."""

    preset = "awq-w4g64"
    max_relative_error = 0.2

    def quantize_float_checkpoint(self, float_dir, config):
        return calibrate(float_dir, config)


class TestAWQCalibratedGEMV(PluginConformance):
    """Calibrated AWQ written in the GEMV layout."""

    preset = "awq-w4g64-gemv"
    max_relative_error = 0.2

    def quantize_float_checkpoint(self, float_dir, config):
        return calibrate(float_dir, config)
