"""Which hooks each path calls, in which order: the table in docs/hooks.md ("Which hooks run when")."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import qcore
from qcore.checkpoint import Checkpoint
from qcore.config import QuantizationConfig
from qcore.errors import CalibrationError, ConfigError
from qcore.modules import linear_from_weight, replace_module
from qcore.plugins import registry


@dataclass
class RecordConfig(QuantizationConfig):
    quant_method = "record"


@dataclass
class RecordCalibratedConfig(QuantizationConfig):
    quant_method = "record_calibrated"
    requires_calibration = True


class RecordLinear(nn.Module):
    def __init__(self, out_features: int, in_features: int, device: str = "meta") -> None:
        super().__init__()
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty((), device=device))

    def forward(self, x):
        return x @ (self.qweight.to(x.dtype) * self.scale.to(x.dtype)).T

    def fill(self, weight: torch.Tensor) -> None:
        self.scale = weight.abs().max().float() / 127
        self.qweight = torch.round(weight.float() / self.scale).to(torch.int8)


class Recorder:
    """Implements every hook and records each call's name (and, for create_quantized_param, pre_quantized)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @qcore.hookimpl
    def qcore_register_methods(self):
        return [RecordConfig, RecordCalibratedConfig]

    @qcore.hookimpl
    def validate_environment(self):
        self.calls.append("validate_environment")

    @qcore.hookimpl
    def process_before_weight_loading(self, model, modules, metadata):
        self.calls.append("process_before_weight_loading")
        self.metadata = metadata
        for name in modules:
            linear = model.get_submodule(name)
            replace_module(model, name, RecordLinear(linear.out_features, linear.in_features))

    @qcore.hookimpl
    def create_quantized_param(self, module, tensors, pre_quantized, device):
        self.calls.append(f"create_quantized_param(pre_quantized={pre_quantized})")
        assert module.qweight.device.type == "meta"
        if pre_quantized:
            module.qweight, module.scale = tensors["qweight"].to(device), tensors["scale"].to(device)
        else:
            module.fill(tensors["weight"])
        return True

    @qcore.hookimpl
    def process_after_weight_loading(self):
        self.calls.append("process_after_weight_loading")

    @qcore.hookimpl
    def calibration_init(self, module):
        self.calls.append("calibration_init")
        return {"batches": 0}

    @qcore.hookimpl
    def calibration_add_batch(self, state):
        self.calls.append("calibration_add_batch")
        state["batches"] += 1

    @qcore.hookimpl
    def quantize_calibrated(self, module, state):
        self.calls.append("quantize_calibrated")
        assert state["batches"] > 0
        new = RecordLinear(module.out_features, module.in_features, device="cpu")
        new.fill(module.weight.detach())
        return new

    @qcore.hookimpl
    def module_state_dict(self, module):
        self.calls.append("module_state_dict")
        return None

    @qcore.hookimpl
    def checkpoint_metadata(self, tensors):
        self.calls.append("checkpoint_metadata")
        return {"record": str(len(tensors))}

    @qcore.hookimpl
    def dequantize(self, module):
        self.calls.append("dequantize")
        return linear_from_weight(module.qweight.float() * module.scale)

    @qcore.hookimpl
    def is_trainable(self):
        self.calls.append("is_trainable")
        return False


def collapse(calls: list[str]) -> list[str]:
    """Consecutive repeats as one entry: the per-module hooks of one phase read as one step."""
    return [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]


@pytest.fixture
def recorder():
    plugin = Recorder()
    registry().register(plugin, "recorder")
    return plugin


def test_load_quantizing_on_the_fly_then_save_then_load_prequantized(recorder, float_dir, tmp_path):
    model = qcore.load_quantized(float_dir, quantization_config=RecordConfig(), progress=False)
    assert collapse(recorder.calls) == [
        "validate_environment", "process_before_weight_loading", "create_quantized_param(pre_quantized=False)",
        "process_after_weight_loading",
    ]
    assert recorder.calls.count("create_quantized_param(pre_quantized=False)") == len(model.qcore_modules)
    recorder.calls.clear()
    qcore.save_quantized(model, tmp_path / "q")
    assert collapse(recorder.calls) == ["module_state_dict", "checkpoint_metadata"]
    recorder.calls.clear()
    qcore.load_quantized(tmp_path / "q", progress=False)
    written = len(Checkpoint(tmp_path / "q").tensors)
    assert recorder.metadata == {"format": "pt", "record": str(written)}  # the plugin's metadata comes back
    assert collapse(recorder.calls) == [
        "validate_environment", "process_before_weight_loading", "create_quantized_param(pre_quantized=True)",
        "process_after_weight_loading",
    ]


def test_quantize_in_memory_without_data(recorder, float_dir):
    model = qcore.load_quantized(float_dir, progress=False)
    qcore.quantize(model, RecordConfig())
    assert collapse(recorder.calls) == [
        "validate_environment", "process_before_weight_loading", "create_quantized_param(pre_quantized=False)",
        "process_after_weight_loading",
    ]
    recorder.calls.clear()
    assert qcore.is_trainable(model) is False
    qcore.dequantize(model)
    assert collapse(recorder.calls) == ["is_trainable", "dequantize"]


def test_quantize_with_calibration(recorder, float_dir):
    model = qcore.load_quantized(float_dir, progress=False)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    qcore.quantize(model, RecordCalibratedConfig(), calibration=ids, progress=False)
    calls = collapse(recorder.calls)
    assert calls[0] == "validate_environment" and calls[-1] == "process_after_weight_loading"
    per_group = calls[1:-1]
    # each group of linears: init for each, batches through the block, then quantize each
    assert per_group[:3] == ["calibration_init", "calibration_add_batch", "quantize_calibrated"]
    assert set(per_group) == {"calibration_init", "calibration_add_batch", "quantize_calibrated"}
    assert recorder.calls.count("quantize_calibrated") == len(model.qcore_modules)
    assert "process_before_weight_loading" not in recorder.calls and not any(
        c.startswith("create_quantized_param") for c in recorder.calls
    )


def test_calibration_problems_are_found_before_the_first_block(recorder, float_dir):
    """A module outside the decoder blocks, or one the plugin cannot pack, stops calibration before any block runs."""
    model = qcore.load_quantized(float_dir, progress=False)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(CalibrationError, match="lm_head.*outside the decoder blocks"):
        qcore.quantize(model, RecordCalibratedConfig(modules_to_not_convert=[]), calibration=ids, progress=False)
    assert recorder.calls == []


class RefusingRecorder(Recorder):
    @qcore.hookimpl
    def validate_environment(self, modules):
        self.calls.append("validate_environment")
        for name in modules:
            if name.endswith("down_proj"):
                raise ConfigError(f"{name}: cannot be packed")


def test_a_module_the_plugin_refuses_stops_calibration_before_the_first_block(float_dir):
    plugin = RefusingRecorder()
    registry().register(plugin, "refusing")
    model = qcore.load_quantized(float_dir, progress=False)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.mlp\.down_proj: cannot be packed"):
        qcore.quantize(model, RecordCalibratedConfig(), calibration=ids, progress=False)
    assert plugin.calls == ["validate_environment"]
