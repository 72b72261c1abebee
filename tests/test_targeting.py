import pytest
from throwaway import TinyConfig

from qcore.targeting import matches, select_modules, skip_matches


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("down_proj", "model.layers.0.mlp.down_proj", True),
        ("mlp", "model.layers.0.mlp.down_proj", True),
        ("proj", "model.layers.0.mlp.down_proj", False),
        ("model.layers.1.*", "model.layers.1.mlp.up_proj", True),
        ("model.layers.1.*", "model.layers.10.mlp.up_proj", False),
        ("re:layers\\.1\\d", "model.layers.12.mlp.up_proj", True),
        ("lm_head", "lm_head", True),
    ],
)
def test_pattern_matching(pattern, name, expected):
    assert matches(pattern, name) is expected


def test_default_skips_lm_head_only_linears(tiny_model):
    selected = select_modules(tiny_model, TinyConfig())
    assert "lm_head" not in selected
    assert len(selected) == 2 * 7  # q k v o gate up down per layer
    assert all(".layers." in n for n in selected)


def test_modules_to_not_convert_replaces_the_default(tiny_model):
    selected = select_modules(tiny_model, TinyConfig(modules_to_not_convert=[r"model\.layers\.\d+\.mlp"]))
    assert "lm_head" in selected
    assert not any(".mlp." in n for n in selected) and any(".self_attn." in n for n in selected)


NAMES = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.11.mlp.up_proj",
         "model.layers.1.mlp.gate_proj", "lm_head", "model.embed_tokens", "model.decoder.layers.23.fc1",
         "model.layers.0.mlp.gate", "vision_tower.blocks.0.attn.proj"]
PATTERNS = ["proj", "mlp", "mlp.down", "model.layers.1", "model.layers.1.mlp", "down_proj", "lm_head", "fc1",
            "layers.*", r"model\.layers\.\d+\.mlp", "mlp.gate", "vision_tower", "attn.proj", "q_proj", "head"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_modules_to_not_convert_follows_transformers_rule(pattern):
    """The same decisions as transformers' own matcher on the same names."""
    should_convert_module = pytest.importorskip("transformers.quantizers.quantizers_utils").should_convert_module
    for name in NAMES:
        assert skip_matches(pattern, name) is (not should_convert_module(name, [pattern])), (pattern, name)


def test_per_module_overrides_and_skip(tiny_model):
    cfg = TinyConfig(bits=4, module_overrides={"down_proj": {"bits": 8}, "model.layers.1.self_attn.*": {"skip": True}})
    selected = select_modules(tiny_model, cfg)
    assert selected["model.layers.0.mlp.down_proj"].bits == 8
    assert selected["model.layers.0.mlp.up_proj"].bits == 4
    assert not any(n.startswith("model.layers.1.self_attn") for n in selected)
    assert selected["model.layers.0.mlp.down_proj"].module_overrides == {}
