"""Which modules a method converts, and with which (per-module) config.

Rules, in order:

1. Only ``nn.Linear`` modules are candidates (embeddings and norms never convert).
2. Skipped: every module matched by ``config.modules_to_not_convert``; when that is
   None, the default skip list ``DEFAULT_SKIP`` (the output head ``lm_head``).
3. ``config.module_overrides``: pattern -> {field: value}; the first matching pattern
   gives that module a variant of the config (e.g. ``{"down_proj": {"bits": 8}}``).
   An override ``{"skip": True}`` leaves the module in float.

``modules_to_not_convert`` is Hugging Face's key, so it follows Hugging Face's rule
exactly (transformers' ``should_convert_module``; tests/test_targeting.py compares the
two on the same names): a pattern skips a module when, read as a regular expression,
it matches the name from its start up to a module boundary (``"model.layers.1"``
skips ``model.layers.1.mlp`` but not ``model.layers.11.mlp``), or when the name ends
with the pattern as plain text (``"proj"`` skips ``q_proj``; ``"mlp.down"`` skips
nothing that ends in ``down_proj``).

``module_overrides`` is qcore's own key. Its patterns match a module name when they
equal the name, equal a dotted suffix of it (``"down_proj"`` matches
``model.layers.0.mlp.down_proj``), are a glob matching the whole name
(``"model.layers.1[0-9].*"``), or are ``re:<regex>`` searched in the name.
"""

from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING

from qcore.config import QuantizationConfig

if TYPE_CHECKING:  # torch only where modules are selected: configs (and `qcore plugins`) need none
    from torch import nn

DEFAULT_SKIP = ("lm_head",)


def matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` selects the module called ``name`` (see module docstring)."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern) or ("." + pattern + ".") in ("." + name + ".")


_MODULE_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"


def skip_matches(pattern: str, name: str) -> bool:
    """Hugging Face's rule for ``modules_to_not_convert`` (see module docstring)."""
    return re.match(rf"(?:{pattern}){_MODULE_BOUNDARY}", name) is not None or name.endswith(pattern)


def select_modules(model: nn.Module, config: QuantizationConfig) -> dict[str, QuantizationConfig]:
    """Module name -> effective config, for every module ``config`` converts."""
    from torch import nn

    skip = DEFAULT_SKIP if config.modules_to_not_convert is None else tuple(config.modules_to_not_convert)
    selected: dict[str, QuantizationConfig] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(skip_matches(p, name) for p in skip):
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


def check_pattern(pattern: object, where: str) -> None:
    """A pattern must be a non-empty string; a ``modules_to_not_convert`` or ``re:`` pattern a valid regular expression."""
    from qcore.errors import ConfigError

    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where} holds {pattern!r}; module patterns are non-empty strings")
    regex = pattern if where == "modules_to_not_convert" else pattern[3:] if pattern.startswith("re:") else None
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"{where} pattern {pattern!r} is not a valid regular expression: {exc}") from None
