"""Which modules a method converts, and with which (per-module) config.

Rules, in order:

1. Only ``nn.Linear`` modules are candidates (embeddings and norms never convert).
2. Skipped: every module matched by ``config.modules_to_not_convert``; when that is
   None, the default skip list ``DEFAULT_SKIP`` (the output head ``lm_head``).
3. ``config.module_overrides``: pattern -> {field: value}; the first matching pattern
   gives that module a variant of the config (e.g. ``{"down_proj": {"bits": 8}}``).
   An override ``{"skip": True}`` leaves the module in float.

A pattern matches a module name when it equals the name, equals a dotted suffix of it
(``"down_proj"`` matches ``model.layers.0.mlp.down_proj``), is a glob matching the
whole name (``"model.layers.1[0-9].*"``), or is ``re:<regex>`` searched in the name.
This is a superset of Hugging Face's substring rule for ``modules_to_not_convert``.
"""

from __future__ import annotations

import fnmatch
import re

from torch import nn

from qcore.config import QuantizationConfig

DEFAULT_SKIP = ("lm_head",)


def matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` selects the module called ``name`` (see module docstring)."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern) or ("." + pattern + ".") in ("." + name + ".")


def select_modules(model: nn.Module, config: QuantizationConfig) -> dict[str, QuantizationConfig]:
    """Module name -> effective config, for every module ``config`` converts."""
    skip = DEFAULT_SKIP if config.modules_to_not_convert is None else tuple(config.modules_to_not_convert)
    selected: dict[str, QuantizationConfig] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(matches(p, name) for p in skip):
            continue
        effective = config
        for pattern, overrides in config.module_overrides.items():
            if matches(pattern, name):
                overrides = dict(overrides)
                if overrides.pop("skip", False):
                    effective = None
                else:
                    effective = config.replace(module_overrides={}, **overrides)
                break
        if effective is not None:
            selected[name] = effective
    return selected
