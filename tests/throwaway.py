"""Throwaway plugins for core tests: a tiny per-tensor int8 method and an observer."""

from dataclasses import dataclass

import torch
from torch import nn

import qcore
from qcore.config import QuantizationConfig
from qcore.modules import replace_module


@dataclass
class TinyConfig(QuantizationConfig):
    quant_method = "tiny"
    bits: int = 8


@dataclass
class OtherConfig(QuantizationConfig):
    quant_method = "other"


class TinyLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("qweight", torch.empty(linear.weight.shape, dtype=torch.int8, device="meta"))
        self.register_buffer("scale", torch.empty((), device="meta"))

    def forward(self, x):
        return x @ (self.qweight.float() * self.scale).T


class TinyPlugin:
    calls: list

    def __init__(self) -> None:
        self.calls = []

    @qcore.hookimpl
    def qcore_register_methods(self):
        return [TinyConfig]

    @qcore.hookimpl
    def process_before_weight_loading(self, model, modules):
        self.calls.append("process_before_weight_loading")
        for name in modules:
            replace_module(model, name, TinyLinear(model.get_submodule(name)))

    @qcore.hookimpl
    def create_quantized_param(self, module_name, module, tensors, pre_quantized):
        self.calls.append(("create_quantized_param", module_name, sorted(tensors)))
        if pre_quantized:
            module.qweight, module.scale = tensors["qweight"], tensors["scale"]
        else:
            w = tensors["weight"]
            scale = w.abs().max() / 127
            module.qweight, module.scale = torch.round(w / scale).to(torch.int8), scale
        return True


class OtherPlugin:
    def __init__(self) -> None:
        self.calls = []

    @qcore.hookimpl
    def qcore_register_methods(self):
        return [OtherConfig]

    @qcore.hookimpl
    def validate_environment(self, config):
        self.calls.append(("validate_environment", config.quant_method))


class Observer:
    def __init__(self) -> None:
        self.calls = []

    @qcore.hookimpl
    def validate_environment(self, config):
        self.calls.append(("validate_environment", config.quant_method))
