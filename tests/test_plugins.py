"""Discovery, the hook contract, routing, QCORE_PLUGINS, broken and conflicting plugins."""

import json

import pytest
from core_helpers import make_dist, run_python
from throwaway import Observer, OtherPlugin, TinyConfig, TinyPlugin

import qcore
from qcore.errors import DuplicateMethodError, MethodNotInstalledError, PluginError
from qcore.plugins import INSTALL_HINTS, registry


def test_example_plugin_is_discovered_through_its_entry_point():
    info = registry().plugins["example"]
    assert info.distribution == "qcore-plugin-example"
    assert info.methods == ["example_int8"]
    assert "create_quantized_param" in info.hooks
    assert registry().config_class("example_int8").__module__ == "qcore_example.config"


def test_misspelled_hook_is_rejected_with_a_suggestion():
    class Bad:
        @qcore.hookimpl
        def create_quantised_param(self, module):
            return True

    with pytest.raises(PluginError, match="create_quantized_param"):
        registry().register(Bad(), "bad")


def test_hook_argument_not_in_spec_is_rejected():
    class Bad:
        @qcore.hookimpl
        def validate_environment(self, config, devicemap):
            pass

    with pytest.raises(PluginError, match="devicemap"):
        registry().register(Bad(), "bad")


def test_register_methods_must_return_config_classes():
    class Bad:
        @qcore.hookimpl
        def qcore_register_methods(self):
            return [dict]

    with pytest.raises(PluginError, match="QuantizationConfig"):
        registry().register(Bad(), "bad")
    assert "bad" not in registry().plugins


def test_routing_reaches_only_the_owning_plugin_and_observers():
    tiny, other, observer = TinyPlugin(), OtherPlugin(), Observer()
    reg = registry()
    reg.register(tiny, "tiny")
    reg.register(other, "other")
    reg.register(observer, "observer")
    reg.hook(TinyConfig()).validate_environment(config=TinyConfig(), device_map=None, model=None, modules={})
    assert other.calls == []
    assert observer.calls == [("validate_environment", "tiny")]
    reg.hook("other").validate_environment(config=qcore.config("other"), device_map=None, model=None, modules={})
    assert other.calls == [("validate_environment", "other")]


def test_unknown_method_names_the_distribution_to_install(monkeypatch):
    monkeypatch.setitem(qcore.plugins.INSTALL_HINTS, "mxfp4", "qcore-plugin-mxfp4")  # a method no plugin here serves
    with pytest.raises(MethodNotInstalledError, match="pip install qcore-plugin-mxfp4"):
        qcore.config("mxfp4", bits=4)
    with pytest.raises(MethodNotInstalledError, match="did you mean 'example_int8'"):
        qcore.config("example_int9")


def test_install_hints_cover_the_six_backends():
    assert set(INSTALL_HINTS) == {"bitsandbytes", "gptq", "awq", "fp8", "hqq", "torchao"}


BROKEN = "raise ImportError('needs libfoo.so')\n"
SECOND_EXAMPLE = """
from dataclasses import dataclass
import qcore
from qcore.config import QuantizationConfig

@dataclass
class Clash(QuantizationConfig):
    quant_method = "example_int8"

@qcore.hookimpl
def qcore_register_methods():
    return [Clash]
"""
REPORT = """
import json, qcore
reg = qcore.registry()
out = {"plugins": sorted(reg.plugins), "broken": {k: v.error for k, v in reg.broken.items()}}
try:
    qcore.config("example_int8")
    out["config"] = "ok"
except Exception as exc:
    out["config"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_broken_plugin_is_recorded_and_others_still_load(tmp_path):
    make_dist(tmp_path, "qcore-plugin-broken", "qcore_broken", BROKEN)
    result = run_python(REPORT, path=tmp_path)
    out = json.loads(result.stdout)
    assert "example" in out["plugins"]
    assert "needs libfoo.so" in out["broken"]["qcore_broken"]
    assert out["config"] == "ok"
    cli = run_python("from qcore.cli import main; main(['plugins'])", path=tmp_path)
    assert "BROKEN" in cli.stdout and "needs libfoo.so" in cli.stdout


def test_two_plugins_for_one_method_is_an_error_naming_both(tmp_path):
    make_dist(tmp_path, "qcore-plugin-clash", "qcore_clash", SECOND_EXAMPLE)
    out = json.loads(run_python(REPORT, path=tmp_path).stdout)
    assert out["config"].startswith("DuplicateMethodError")
    assert "qcore-plugin-example" in out["config"] and "qcore-plugin-clash" in out["config"]
    assert set(out["broken"]) & {"qcore_clash", "example"}  # whichever loaded second is recorded


def test_duplicate_method_in_process():
    class Clash:
        @qcore.hookimpl
        def qcore_register_methods(self):
            return [registry().config_class("example_int8")]

    with pytest.raises(DuplicateMethodError):
        registry().register(Clash(), "clash")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", []), ("none", []), ("example", ["example"]), ("qcore-plugin-example", ["example"]), ("other", [])],
)
def test_qcore_plugins_environment_filter(value, expected):
    code = "import qcore, json; print(json.dumps(sorted(qcore.registry().plugins)))"
    result = run_python(code, env_extra={"QCORE_PLUGINS": value})
    assert json.loads(result.stdout) == expected


def test_trace_prints_hook_calls(tmp_path):
    code = "import qcore; qcore.registry().hook('example_int8').validate_environment(config=qcore.config('example_int8'), device_map=None, model=None, modules={})"
    result = run_python(code, env_extra={"QCORE_TRACE": "1"})
    assert "qcore hook validate_environment" in result.stderr


def test_presets_are_collected_and_validated():
    assert registry().presets["example-int8"]["quant_method"] == "example_int8"

    class BadPreset:
        @qcore.hookimpl
        def qcore_register_methods(self):
            return [TinyConfig]

        @qcore.hookimpl
        def qcore_presets(self):
            return {"example-int8": {"quant_method": "tiny"}}

    with pytest.raises(PluginError, match="already defined"):
        registry().register(BadPreset(), "badpreset")
    assert "tiny" not in registry().methods  # a failed registration leaves nothing behind


def test_a_method_left_out_by_qcore_plugins_says_so(tmp_path):
    """Never 'installed methods: none' when the plugins are merely filtered out."""
    code = ("import qcore\nfrom qcore.errors import MethodNotInstalledError\n"
            "for method in ('example_int8', 'bitsandbytes'):\n"
            "    try:\n        qcore.config(method)\n    except MethodNotInstalledError as exc:\n        print(exc)\n")
    result = run_python(code, env_extra={"QCORE_PLUGINS": "none"})
    lines = result.stdout.strip().splitlines()
    assert "QCORE_PLUGINS='none' leaves out installed plugin(s)" in lines[0] and "example (qcore-plugin-example)" in lines[0]
    assert "methods: none" not in lines[0]
    from importlib.util import find_spec

    if find_spec("qcore_bnb") is not None:  # the py env: installed, filtered out
        assert "qcore-plugin-bnb, which is installed but left out by QCORE_PLUGINS" in lines[1]
    else:  # the core env: not installed
        assert "not installed: pip install qcore-plugin-bnb" in lines[1]
