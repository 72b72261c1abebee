"""The calibration driver, driven by a throwaway method that records what it is fed."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import qcore
from qcore.calibration import calibration_windows, find_blocks
from qcore.config import QuantizationConfig
from qcore.errors import CalibrationError
from qcore.plugins import registry
from qcore.testdata import tiny_llama


@dataclass
class RecordConfig(QuantizationConfig):
    quant_method = "record"
    requires_calibration = True
    true_sequential: bool = False


class RecordPlugin:
    """Quantizes by rounding weights to a coarse grid; records every batch it sees."""

    def __init__(self):
        self.batches: dict[str, list[torch.Tensor]] = {}
        self.quantized: list[str] = []

    @qcore.hookimpl
    def qcore_register_methods(self):
        return [RecordConfig]

    @qcore.hookimpl
    def calibration_init(self, module_name):
        self.batches[module_name] = []
        return self.batches[module_name]

    @qcore.hookimpl
    def calibration_add_batch(self, state, inputs, output, module):
        assert torch.allclose(output, nn.functional.linear(inputs, module.weight), atol=1e-5)
        state.append(inputs.clone())

    @qcore.hookimpl
    def quantize_calibrated(self, module_name, module):
        self.quantized.append(module_name)
        new = nn.Linear(module.in_features, module.out_features, bias=False)
        new.weight = nn.Parameter(torch.round(module.weight.detach() * 4) / 4, requires_grad=False)
        return new


@pytest.fixture
def plugin():
    p = RecordPlugin()
    registry().register(p, "record")
    return p


def windows():
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))


def inputs_of(model, module_name, ids):
    seen = []
    handle = model.get_submodule(module_name).register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    with torch.no_grad():
        for row in ids:
            model(row.unsqueeze(0), use_cache=False)
    handle.remove()
    return seen


def test_each_block_sees_the_outputs_of_the_quantized_blocks_before_it(plugin):
    model, ids = tiny_llama(), windows()
    qcore.quantize(model, RecordConfig(), calibration=ids, progress=False)
    assert len(plugin.quantized) == 14 and set(model.qcore_modules) == set(plugin.quantized)
    # After quantization, running the final model gives block 1 exactly the inputs the driver fed it.
    expected = torch.cat(inputs_of(model, "model.layers.1.self_attn.q_proj", ids))
    got = torch.cat(plugin.batches["model.layers.1.self_attn.q_proj"])  # windows arrive batched
    assert torch.allclose(got, expected, atol=1e-5)
    # ...and they differ from the float model's, so the test would catch a driver that forgot to requantize.
    float_inputs = inputs_of(tiny_llama(), "model.layers.1.self_attn.q_proj", ids)
    assert not torch.allclose(got, torch.cat(float_inputs), atol=1e-5)


def test_true_sequential_groups_by_shared_input_in_execution_order(plugin):
    model, ids = tiny_llama(), windows()
    qcore.quantize(model, RecordConfig(true_sequential=True), calibration=ids, progress=False)
    layer0 = [n.removeprefix("model.layers.0.") for n in plugin.quantized if n.startswith("model.layers.0.")]
    assert layer0 == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    # o_proj saw inputs computed with q/k/v already quantized: equal to the final model's.
    expected = torch.cat(inputs_of(model, "model.layers.0.self_attn.o_proj", ids))
    assert torch.allclose(torch.cat(plugin.batches["model.layers.0.self_attn.o_proj"]), expected, atol=1e-5)


def test_find_blocks():
    name, blocks = find_blocks(tiny_llama())
    assert name == "model.layers" and len(blocks) == 2


class WordTokenizer:
    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[hash(w) % 200 for w in text.split()]])
        return type("Enc", (), {"input_ids": ids})()


def test_windows_from_text_are_seeded_and_sized(tmp_path):
    text = " ".join(f"w{i}" for i in range(500))
    a = calibration_windows(text, WordTokenizer(), nsamples=4, seqlen=32, seed=1)
    b = calibration_windows(text, WordTokenizer(), nsamples=4, seqlen=32, seed=1)
    assert [t.shape for t in a] == [(1, 32)] * 4 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    path = tmp_path / "cal.txt"
    path.write_text(text)
    assert all(torch.equal(x, y) for x, y in zip(calibration_windows(path, WordTokenizer(), 4, 32, 1), a, strict=True))


def test_too_short_text_is_a_clear_error():
    with pytest.raises(CalibrationError, match="fewer than seqlen"):
        calibration_windows("only a few words", WordTokenizer(), nsamples=4, seqlen=32)


def test_calibration_method_without_data_is_an_error(plugin):
    with pytest.raises(CalibrationError, match="calibration="):
        qcore.quantize(tiny_llama(), RecordConfig())


def test_stopping_observing_forwards_early_changes_nothing(plugin, monkeypatch):
    import qcore.calibration as calibration

    ids = torch.randint(0, 256, (20, 16), generator=torch.Generator().manual_seed(2))  # 3 batches of up to 8
    results = {}
    for early in (True, False):
        monkeypatch.setattr(calibration, "EARLY_STOP", early)
        plugin.batches.clear()
        model, runs = tiny_llama(), []
        model.model.layers[0].mlp.act_fn.register_forward_hook(lambda *_, _runs=runs: _runs.append(1))  # the MLP's middle
        model = qcore.quantize(model, RecordConfig(true_sequential=True), calibration=ids, progress=False)
        results[early] = ({n: [b.clone() for b in v] for n, v in plugin.batches.items()},
                          {k: v.clone() for k, v in model.state_dict().items()}, len(runs))
    (seen_a, state_a, runs_a), (seen_b, state_b, runs_b) = results[True], results[False]
    assert runs_a < runs_b  # the early stop did skip the rest of the block
    assert seen_a.keys() == seen_b.keys()
    for name in seen_a:
        assert len(seen_a[name]) == len(seen_b[name]) == 3, name  # every batch observed once
        assert all(torch.equal(x, y) for x, y in zip(seen_a[name], seen_b[name], strict=True)), name
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
