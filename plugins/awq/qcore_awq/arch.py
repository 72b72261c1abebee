"""Which scales AWQ searches in a decoder block, per architecture (AutoAWQ's get_layers_for_scaling).

A :class:`ScaleGroup` is a set of linears that read the same input, the operation before them
that the inverse scales fold into (a norm's weight, or the output rows of a linear), and the
module whose output the scale search compares (None: the single linear itself). Names are
relative to the decoder block.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from qcore.errors import ConfigError


@dataclass(frozen=True)
class ScaleGroup:
    prev: str
    linears: tuple[str, ...]
    inspect: str | None = None
    only_if_same_shape: bool = False  # v_proj -> o_proj: only when v's output is o's input, one to one


LLAMA_LIKE = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), None, only_if_same_shape=True),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",)),
)

SCALE_GROUPS: dict[str, tuple[ScaleGroup, ...]] = {"llama": LLAMA_LIKE, "mistral": LLAMA_LIKE, "qwen2": LLAMA_LIKE}

NO_CLIP = ("q_", "k_", "query", "key", "Wqkv")  # AutoAWQ skips these in the clip search (q k^T is hard to clip)


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def scale_groups(model: nn.Module) -> tuple[ScaleGroup, ...]:
    """The scale groups of ``model``'s decoder blocks; ConfigError naming the architecture when unknown."""
    kind = model_type(model)
    if kind not in SCALE_GROUPS:
        architectures = getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__]
        raise ConfigError(
            f"AWQ has no scaling map for architecture {kind!r} ({', '.join(architectures)}); it knows "
            f"{', '.join(sorted(SCALE_GROUPS))}. Quantize it with another method (gptq), or add its map to "
            "qcore_awq.arch.SCALE_GROUPS"
        )
    return SCALE_GROUPS[kind]


def active_groups(block: nn.Module, groups: tuple[ScaleGroup, ...], targeted: set[str]) -> list[ScaleGroup]:
    """The groups that apply to this block: every linear quantized, and v->o only when shapes allow it."""
    out = []
    for group in groups:
        if not all(name in targeted for name in group.linears):
            continue
        if group.only_if_same_shape:
            prev, (only,) = block.get_submodule(group.prev), group.linears
            if prev.weight.shape != block.get_submodule(only).weight.shape:
                continue
        out.append(group)
    return out
