"""The loading pipeline, on-the-fly quantization, device maps and error reports."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from throwaway import TinyLinear, TinyPlugin

import qcore
from qcore.errors import ConfigError, MethodNotInstalledError, MissingKeysError, TensorMismatchError
from qcore.plugins import registry


def test_float_checkpoint_loads_exactly(float_dir, tiny_model, tokens):
    model = qcore.load_quantized(float_dir, progress=False)
    assert model.qcore_config is None
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, tiny_model(tokens).logits)


def test_hooks_run_in_order_and_groups_reach_create_quantized_param(float_dir, tokens, tiny_model):
    plugin = TinyPlugin()
    registry().register(plugin, "tiny")
    model = qcore.load_quantized(float_dir, quantization_config=qcore.config("tiny"), progress=False)
    assert plugin.calls[0] == "process_before_weight_loading"
    creates = [c for c in plugin.calls if c[0] == "create_quantized_param"]
    assert len(creates) == len(model.qcore_modules) == 14
    assert all(c[2] == ["weight"] for c in creates)
    assert isinstance(model.model.layers[0].mlp.down_proj, TinyLinear)
    with torch.no_grad():
        rel = (model(tokens).logits - tiny_model(tokens).logits).norm() / tiny_model(tokens).logits.norm()
    assert rel < 0.05


def test_prequantized_companions_split_over_shards_are_grouped(float_dir, tmp_path, tokens):
    plugin = TinyPlugin()
    registry().register(plugin, "tiny")
    model = qcore.load_quantized(float_dir, quantization_config=qcore.config("tiny"), progress=False)
    path = qcore.save_quantized(model, tmp_path / "q", max_shard_size=1)  # one tensor per shard
    plugin.calls.clear()
    again = qcore.load_quantized(path, progress=False)
    creates = [c for c in plugin.calls if c[0] == "create_quantized_param"]
    assert all(c[2] == ["qweight", "scale"] for c in creates) and len(creates) == 14
    with torch.no_grad():
        assert torch.equal(again(tokens).logits, model(tokens).logits)


def test_unknown_method_in_checkpoint_is_never_loaded_as_float(float_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(qcore.plugins.INSTALL_HINTS, "mxfp4", "qcore-plugin-mxfp4")  # a method no plugin here serves
    target = tmp_path / "awq"
    target.mkdir()
    (target / "model.safetensors").write_bytes((float_dir / "model.safetensors").read_bytes())
    config = json.loads((float_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "bits": 4}
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(MethodNotInstalledError, match="pip install qcore-plugin-mxfp4"):
        qcore.load_quantized(target)


def test_user_config_for_another_method_than_the_checkpoint(float_dir, tmp_path):
    model = qcore.load_quantized(float_dir, quantization_config="example-int8", progress=False)
    path = qcore.save_quantized(model, tmp_path / "q")
    registry().register(TinyPlugin(), "tiny")
    with pytest.raises(ConfigError, match="already quantized with 'example_int8'"):
        qcore.load_quantized(path, quantization_config=qcore.config("tiny"))


def _copy_with(float_dir, dst, edit):
    dst.mkdir()
    tensors = load_file(str(float_dir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((float_dir / "config.json").read_text())
    return dst


def test_shape_mismatch_names_the_tensor(float_dir, tmp_path):
    path = _copy_with(float_dir, tmp_path / "bad", lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    with pytest.raises(TensorMismatchError, match="model.norm.weight.*\\[65\\].*\\[64\\]"):
        qcore.load_quantized(path, progress=False)


def test_dtype_mismatch_is_reported(float_dir, tmp_path):
    path = _copy_with(float_dir, tmp_path / "bad", lambda t: t.update({"model.norm.weight": torch.ones(64, dtype=torch.int32)}))
    with pytest.raises(TensorMismatchError, match="int32"):
        qcore.load_quantized(path, progress=False)


def test_missing_and_unexpected_tensors_are_reported(float_dir, tmp_path):
    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.1.mlp.extra.weight"] = torch.zeros(2)

    path = _copy_with(float_dir, tmp_path / "bad", edit)
    with pytest.raises(MissingKeysError, match="model.layers.1.mlp.up_proj.weight"):
        qcore.load_quantized(path, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = qcore.load_quantized(path, strict=False, progress=False)
    assert any("model.layers.1.mlp.extra.weight" in str(w.message) for w in caught)
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"


def test_model_factory_skeleton_without_config_json(tiny_model, tmp_path, tokens):
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items() if k != "lm_head.weight"} | {"lm_head.weight": tiny_model.lm_head.weight.clone()}, str(tmp_path / "w.safetensors"))
    model = qcore.load_quantized(tmp_path / "w.safetensors", "example-int8", model=lambda: type(tiny_model)(tiny_model.config), progress=False)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Int8Linear"
    with torch.no_grad():
        model(tokens)


def test_core_works_without_transformers(tmp_path):
    from core_helpers import run_python

    code = f"""
import sys
sys.modules['transformers'] = None  # as if not installed
import torch, qcore
from torch import nn
from safetensors.torch import save_file
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
save_file(net.state_dict(), r"{tmp_path}/net.safetensors")
cfg = qcore.config("example_int8", modules_to_not_convert=[])
m = qcore.load_quantized(r"{tmp_path}/net.safetensors", cfg, model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), progress=False)
print(sorted(m.qcore_modules), type(m[0]).__name__)
try:
    qcore.load_quantized(r"{tmp_path}/net.safetensors", cfg)
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    result = run_python(code)
    assert "['0', '2'] Int8Linear" in result.stdout, result.stderr
    assert "pass model=" in result.stdout


def test_device_map_auto_with_disk_offload(float_dir, tmp_path, tokens):
    reference = qcore.load_quantized(float_dir, "example-int8", progress=False)
    model = qcore.load_quantized(float_dir, "example-int8", device_map="auto", max_memory={"cpu": 150_000},
                                 offload_folder=tmp_path / "offload", progress=False)
    assert "disk" in model.hf_device_map.values()
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, reference(tokens).logits)


def test_disk_offload_needs_a_folder(float_dir):
    with pytest.raises(ConfigError, match="offload_folder"):
        qcore.load_quantized(float_dir, "example-int8", device_map="auto", max_memory={"cpu": 150_000}, progress=False)


def test_in_memory_quantize_and_dequantize(tiny_model, tokens):
    from qcore.testdata import tiny_llama

    model = tiny_llama()
    qcore.quantize(model, qcore.config("example_int8"))
    assert len(model.qcore_modules) == 14
    with torch.no_grad():
        quantized_logits = model(tokens).logits
    qcore.dequantize(model)
    assert type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    with torch.no_grad():
        assert torch.allclose(model(tokens).logits, quantized_logits, atol=1e-5)


def test_is_trainable_asks_the_plugin(float_dir):
    seen = []

    class WatchTrainable:  # an observer may wrap a firstresult hook (and see the owner's answer)
        @qcore.hookimpl(wrapper=True)
        def is_trainable(self):
            answer = yield
            seen.append(answer)
            return answer

    model = qcore.load_quantized(float_dir, "example-int8", progress=False)
    assert qcore.is_trainable(model) is False  # the example plugin does not implement the hook
    registry().register(WatchTrainable(), "trainable-observer")
    assert qcore.is_trainable(model) is False and seen == [None]


def test_an_observer_cannot_take_over_a_firstresult_hook(float_dir):
    """A method-less plugin answering create_quantized_param would leave the owner's modules on meta."""
    from qcore.errors import PluginError

    class Hijacker:
        @qcore.hookimpl
        def create_quantized_param(self):
            return True

    with pytest.raises(PluginError, match="observer.*create_quantized_param.*wrapper=True"):
        registry().register(Hijacker(), "hijacker")
    assert "hijacker" not in registry().plugins
    model = qcore.load_quantized(float_dir, "example-int8", progress=False)
    assert not any(t.device.type == "meta" for t in model.state_dict().values())


@pytest.mark.parametrize("source", ["factory", "instance"])
def test_torch_dtype_applies_to_a_given_model(float_dir, tokens, source):
    """torch_dtype is honoured for model= (a factory or a meta instance) as for a model built from config.json."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    from qcore.testdata import tiny_llama_config

    config = tiny_llama_config()
    if source == "factory":
        model_arg = lambda: LlamaForCausalLM(config)  # noqa: E731
    else:
        with init_empty_weights():
            model_arg = LlamaForCausalLM(config)
    model = qcore.load_quantized(float_dir, model=model_arg, torch_dtype=torch.bfloat16, progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    reference = qcore.load_quantized(float_dir, torch_dtype=torch.bfloat16, progress=False)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, reference(tokens).logits)
