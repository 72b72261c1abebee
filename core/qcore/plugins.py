"""Plugin discovery (entry-point group ``qcore``), the method registry and hook routing.

``QCORE_PLUGINS`` restricts which entry points load: unset loads all; empty or
``none`` loads none; a comma list loads only those (entry-point names or
distribution names). A plugin that fails to import or register is recorded in
``registry().broken`` with its error and does not stop the others.
``QCORE_TRACE=1`` prints every hook call and its result to stderr.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from qcore import hookspecs
from qcore.config import QuantizationConfig
from qcore.errors import ConfigError, DuplicateMethodError, MethodNotInstalledError, PluginError

ENTRY_POINT_GROUP = "qcore"

# The one place the core names backends: unknown method -> distribution to install, and the
# pickled files some tools write -> how to re-save them as safetensors.
INSTALL_HINTS = {
    "bitsandbytes": "qcore-plugin-bnb",
    "gptq": "qcore-plugin-gptq",
    "awq": "qcore-plugin-awq",
    "fp8": "qcore-plugin-fp8",
    "hqq": "qcore-plugin-hqq",
    "torchao": "qcore-plugin-torchao",
}
PICKLE_HINTS = {
    "qmodel.pt": "an hqq checkpoint: load it with hqq's AutoHQQHFModel.from_quantized(dir, device='cpu') and re-save "
                 "it with AutoHQQHFModel.save_to_safetensors(model, new_dir); see docs/methods/hqq.md",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    plugin: Any = None
    methods: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def hooks(self) -> list[str]:
        if self.plugin is None:
            return []
        return sorted(n for n in dir(self.plugin) if n in _spec_names() and callable(getattr(self.plugin, n)))


def _spec_names() -> set[str]:
    return {n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "qcore_spec")}


class PluginRegistry:
    """Owns the pluggy PluginManager, the method -> config class table and hook routing."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("qcore")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.broken: dict[str, PluginInfo] = {}
        self.methods: dict[str, type[QuantizationConfig]] = {}
        self.method_plugin: dict[str, str] = {}
        self.conflicts: dict[str, list[str]] = {}
        self.presets: dict[str, dict[str, Any]] = {}
        self.filtered: dict[str, str | None] = {}  # entry points QCORE_PLUGINS left out -> distribution
        self._callers: dict[tuple[str, str], Any] = {}
        if os.environ.get("QCORE_TRACE"):
            self.pm.add_hookcall_monitoring(_trace_before, _trace_after)

    # --- registration -------------------------------------------------------------
    def register(self, plugin: Any, name: str, distribution: str | None = None, version: str | None = None) -> PluginInfo:
        """Register a plugin object; raise PluginError if its hooks do not fit the contract."""
        if name in self.plugins:
            raise PluginError(f"a plugin named {name!r} is already registered")
        specs = _spec_names()
        for attr in dir(plugin):
            if self.pm.parse_hookimpl_opts(plugin, attr) is not None and attr not in specs:
                close = difflib.get_close_matches(attr, sorted(specs), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise PluginError(f"plugin {name!r}: {attr!r} is marked @hookimpl but is no qcore hook{hint}")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} does not fit the hook contract: {exc}") from exc
        info = PluginInfo(name, distribution, version, plugin)
        try:
            classes = self._call_own(plugin, "qcore_register_methods") or []
            for cls in classes:
                if not (isinstance(cls, type) and issubclass(cls, QuantizationConfig) and cls.quant_method):
                    raise PluginError(
                        f"plugin {name!r}: qcore_register_methods returned {cls!r}; expected QuantizationConfig "
                        "subclasses with a quant_method"
                    )
            for cls in classes:
                self._claim(cls, info)
            if not info.methods:
                self._check_observer(plugin, name)
            presets = self._call_own(plugin, "qcore_presets") or {}
            for preset, data in presets.items():
                if preset in self.presets:
                    raise PluginError(f"plugin {name!r}: preset {preset!r} is already defined by another plugin")
                if data.get("quant_method") not in info.methods:
                    raise PluginError(f"plugin {name!r}: preset {preset!r} is not for a method this plugin registers")
            self.presets.update({preset: dict(data) for preset, data in presets.items()})
        except Exception:
            self.pm.unregister(plugin)
            for method in info.methods:
                self.methods.pop(method, None)
                self.method_plugin.pop(method, None)
            raise
        self.plugins[name] = info
        self._callers.clear()
        return info

    def _claim(self, cls: type[QuantizationConfig], info: PluginInfo) -> None:
        method = cls.quant_method
        owner = self.method_plugin.get(method)
        if owner is not None and owner != info.name:
            first = self.plugins[owner]
            dists = [first.distribution or owner, info.distribution or info.name]
            self.conflicts[method] = dists
            raise DuplicateMethodError(
                f"quantization method {method!r} is claimed by two plugins: {dists[0]} and {dists[1]}; "
                f"uninstall one (pip uninstall {dists[1]}) or choose with QCORE_PLUGINS"
            )
        self.methods[method] = cls
        self.method_plugin[method] = info.name
        info.methods.append(method)

    def _check_observer(self, plugin: Any, name: str) -> None:
        """An observer (no methods) sees every method's hooks, so it may not answer a firstresult hook:
        it would take the call away from the plugin that owns the method. It may wrap one."""
        for hook_name in sorted(_spec_names()):
            caller = getattr(self.pm.hook, hook_name)
            if not caller.spec.opts.get("firstresult"):
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.hookwrapper or impl.wrapper):
                    raise PluginError(
                        f"plugin {name!r} registers no method (an observer) but implements {hook_name!r}, whose first "
                        "answer wins: it would take the call from the plugin that owns the method. Observe it with "
                        "@qcore.hookimpl(wrapper=True) (yield, then return the result), or register a method"
                    )

    def _call_own(self, plugin: Any, hook_name: str) -> Any:
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            if impl.plugin is plugin:
                return impl.function()
        return None

    def unregister(self, name: str) -> None:
        info = self.plugins.pop(name)
        self.pm.unregister(info.plugin)
        for method in info.methods:
            self.methods.pop(method, None)
            self.method_plugin.pop(method, None)
        self.presets = {k: v for k, v in self.presets.items() if v.get("quant_method") not in info.methods}
        self._callers.clear()

    def load_entry_points(self) -> None:
        """Register every plugin advertised under the ``qcore`` entry-point group."""
        from importlib_metadata import entry_points

        wanted = _wanted_from_env()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if wanted is not None and ep.name not in wanted and (dist or "") not in wanted:
                self.filtered[ep.name] = dist
                continue
            if ep.name in self.plugins:
                continue
            try:
                plugin = ep.load()
                self.register(plugin, ep.name, dist, version)
            except (Exception, SystemExit) as exc:  # a broken plugin is recorded, never fatal (even sys.exit())
                self.broken[ep.name] = PluginInfo(ep.name, dist, version, error=f"{type(exc).__name__}: {exc}")

    # --- lookup and routing ---------------------------------------------------------
    def config_class(self, method: str) -> type[QuantizationConfig]:
        """The config class serving ``method``; a clear error when none or two do."""
        if not isinstance(method, str) or not method:
            raise ConfigError(
                f"quant_method must name a quantization method (a non-empty string such as 'gptq'), got {method!r}; "
                "see `qcore plugins` for the installed ones"
            )
        if method in self.conflicts:
            a, b = self.conflicts[method]
            raise DuplicateMethodError(
                f"quantization method {method!r} is claimed by two plugins: {a} and {b}; "
                f"uninstall one (pip uninstall {b}) or choose with QCORE_PLUGINS"
            )
        if method in self.methods:
            return self.methods[method]
        filtered = ""
        if self.filtered:
            shown = ", ".join(sorted(f"{n} ({d})" if d else n for n, d in self.filtered.items()))
            filtered = f"; QCORE_PLUGINS={os.environ.get('QCORE_PLUGINS', '')!r} leaves out installed plugin(s) {shown}"
        broken = [b for b in self.broken.values() if b.distribution == INSTALL_HINTS.get(method)]
        if broken:
            raise MethodNotInstalledError(
                f"the plugin for quantization method {method!r} ({broken[0].distribution}) is installed but failed "
                f"to load: {broken[0].error}. Run `qcore plugins` for details"
            )
        if method in INSTALL_HINTS:
            if INSTALL_HINTS[method] in self.filtered.values():
                raise MethodNotInstalledError(
                    f"quantization method {method!r} is served by {INSTALL_HINTS[method]}, which is installed but left "
                    f"out by QCORE_PLUGINS={os.environ.get('QCORE_PLUGINS', '')!r}; add it there or unset QCORE_PLUGINS"
                )
            raise MethodNotInstalledError(
                f"quantization method {method!r} needs a plugin that is not installed: "
                f"pip install {INSTALL_HINTS[method]}{filtered}"
            )
        known = sorted(set(self.methods) | set(INSTALL_HINTS))
        close = difflib.get_close_matches(method, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        loaded = f"methods of the loaded plugins: {', '.join(sorted(self.methods))}" if self.methods else "no plugin is loaded"
        raise MethodNotInstalledError(
            f"unknown quantization method {method!r}; {hint}{loaded}{filtered}. "
            f"A third-party method needs its plugin installed (pip install <its distribution>)"
        )

    def hook(self, config: QuantizationConfig | str) -> _RoutedHooks:
        """Hook callers that reach only the plugin owning ``config``'s method plus observers."""
        method = config if isinstance(config, str) else config.quant_method
        return _RoutedHooks(self, method)

    def _caller(self, method: str, hook_name: str) -> Any:
        key = (method, hook_name)
        if key not in self._callers:
            others = [
                info.plugin for info in self.plugins.values() if info.methods and method not in info.methods
            ]
            self._callers[key] = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        return self._callers[key]


class _RoutedHooks:
    def __init__(self, registry: PluginRegistry, method: str) -> None:
        self._registry = registry
        self._method = method

    def __getattr__(self, hook_name: str) -> Any:
        if not hasattr(self._registry.pm.hook, hook_name):
            raise AttributeError(f"no qcore hook named {hook_name!r}")
        return self._registry._caller(self._method, hook_name)


def _wanted_from_env() -> set[str] | None:
    raw = os.environ.get("QCORE_PLUGINS")
    if raw is None:
        return None
    if raw.strip().lower() in ("", "none"):
        return set()
    return {p.strip() for p in raw.split(",") if p.strip()}


def _trace_before(hook_name: str, impls: list, kwargs: dict) -> None:
    names = [i.plugin_name for i in impls]
    shown = {k: (type(v).__name__ if not isinstance(v, str | int | float | bool | None) else v) for k, v in kwargs.items()}
    print(f"qcore hook {hook_name}{shown} -> {names}", file=sys.stderr)


def _trace_after(outcome: Any, hook_name: str, impls: list, kwargs: dict) -> None:
    try:
        result = outcome.get_result()
    except BaseException as exc:  # noqa: BLE001 - only reporting
        result = f"raised {type(exc).__name__}"
    print(f"qcore hook {hook_name} returned {type(result).__name__ if result is not None else None}", file=sys.stderr)


_REGISTRY: PluginRegistry | None = None


def registry() -> PluginRegistry:
    """The process-wide registry, discovering entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = PluginRegistry()
        _REGISTRY.load_entry_points()
    return _REGISTRY


def reset_registry() -> None:
    """Forget every registered plugin; the next registry() call discovers again (tests)."""
    global _REGISTRY
    _REGISTRY = None


def make_config(method: str, **kwargs: Any) -> QuantizationConfig:
    """``qcore.config("gptq", bits=4)``: build a method's config; misspelled keys are errors.

    :param method: the method's name (``quant_method``: "bitsandbytes", "gptq", ...; see ``qcore plugins``).
    :param kwargs: the config's fields, named as in config.json.
    :returns: the method's QuantizationConfig.
    """
    cls = registry().config_class(method)
    return cls.from_dict({"quant_method": method, **kwargs}, strict=True)


def preset_config(preset: str) -> QuantizationConfig:
    """The config of a named preset (see the qcore_presets hook)."""
    presets = registry().presets
    if preset not in presets:
        close = difflib.get_close_matches(preset, sorted(presets), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown preset {preset!r}; {hint}available: {', '.join(sorted(presets)) or 'none'}")
    return config_from_dict(presets[preset], strict=True)


def config_from_dict(data: dict[str, Any], *, strict: bool = False) -> QuantizationConfig:
    """A config from a ``quantization_config`` dict (as in config.json)."""
    if not isinstance(data, dict):
        raise ConfigError(f"quantization_config must be a JSON object, not {type(data).__name__}")
    if "quant_method" not in data:
        raise ConfigError("quantization_config has no 'quant_method'; cannot tell which method wrote it")
    return registry().config_class(data["quant_method"]).from_dict(data, strict=strict)
