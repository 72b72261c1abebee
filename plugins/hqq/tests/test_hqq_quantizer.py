"""The quantizer against hqq's own: identical codes, scale and zero (float32, CPU)."""

import pytest
import torch
from hqq_oracle import hqq_linear, hqq_quantize

from qcore_hqq import quantizer
from qcore_hqq.bitpack import PACKING_BY_NBITS, pack, unpack
from qcore_hqq.format import HqqMeta, layer_tensors


def random_weight(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.02
    w[:, 3] *= 8  # an outlier column, as real layers have
    return w


def assert_same_as_hqq(weight: torch.Tensor, nbits: int, group_size: int, axis: int) -> None:
    round_zero = nbits == 4
    ref_q, ref_meta = hqq_quantize(weight, nbits, group_size, axis, round_zero)
    ours = quantizer.quantize(weight, nbits, group_size, axis, optimize=True, round_zero=round_zero)
    assert torch.equal(ours.W_q, ref_q.float()), f"W_q differs in {(ours.W_q != ref_q.float()).sum()} places"
    assert torch.equal(ours.scale, ref_meta["scale"]), "scale differs"
    assert torch.equal(ours.zero, ref_meta["zero"]), "zero differs"


@pytest.mark.parametrize("nbits", [2, 3, 4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_matches_hqq_on_random_layers(nbits: int, axis: int) -> None:
    assert_same_as_hqq(random_weight(96, 128, seed=nbits * 10 + axis), nbits, 64, axis)


def test_solver_changes_the_zero_point() -> None:
    """Guard against a vacuous comparison: the solver moves zero away from its min/max init."""
    w = random_weight(64, 128, seed=1)
    plain = quantizer.quantize(w, 4, 64, 1, optimize=False, round_zero=True)
    solved = quantizer.quantize(w, 4, 64, 1, optimize=True, round_zero=True)
    assert not torch.equal(plain.zero, solved.zero)
    err = [((q.W_q - q.zero) * q.scale).reshape(w.shape).sub(w).abs().mean() for q in (plain, solved)]
    assert err[1] < err[0]


def test_constant_and_tiny_groups_follow_hqqs_clamps() -> None:
    w = random_weight(32, 128, seed=3)
    w[0, :64] = 0.5  # a constant group: max - min = 0 -> scale 1
    w[1, :64] = torch.linspace(0, 1e-5, 64)  # |max - min| <= 1e-4 -> scale 1
    for nbits, axis in [(4, 1), (2, 1), (4, 0)]:
        assert_same_as_hqq(w, nbits, 64, axis)


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 8])
def test_bitpack_matches_hqq(nbits: int) -> None:
    w = random_weight(64, 160, seed=nbits)
    ref_packed, _ = hqq_quantize(w, nbits, 32, 1, nbits == 4, optimize=False, bitpack=True)
    q = quantizer.quantize(w, nbits, 32, 1, optimize=False, round_zero=nbits == 4)
    packed = pack(q.W_q, PACKING_BY_NBITS[nbits])
    assert packed.dtype == ref_packed.dtype and torch.equal(packed, ref_packed)
    assert torch.equal(unpack(packed, PACKING_BY_NBITS[nbits], rows=q.W_q.shape[0]), q.W_q.to(torch.uint8))


@pytest.mark.parametrize("nbits,axis", [(4, 1), (3, 1), (2, 0), (8, 1)])
def test_layer_tensors_match_hqqs_state_dict(nbits: int, axis: int) -> None:
    """Every tensor hqq's HQQLinear writes for a layer, with the same dtype, shape and value."""
    torch.manual_seed(nbits)
    linear = torch.nn.Linear(128, 64, bias=True)
    ref = hqq_linear(linear, nbits, 64, axis).state_dict()
    q = quantizer.quantize(linear.weight.data, nbits, 64, axis, round_zero=nbits == 4)
    meta = HqqMeta(nbits=nbits, group_size=64, axis=axis, shape=(64, 128), round_zero=nbits == 4)
    ours = layer_tensors(pack(q.W_q, meta.packing), q.scale, q.zero, meta, linear.bias.data)
    assert sorted(ours) == sorted(ref)
    for key in ref:
        assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
        assert torch.equal(ours[key], ref[key]), key


@pytest.mark.slow
def test_quantize_matches_hqq_on_smollm2_layers() -> None:
    from safetensors import safe_open

    from qcore.testdata import smollm2_checkpoint

    with safe_open(str(smollm2_checkpoint() / "model.safetensors"), "pt") as f:
        weights = [f.get_tensor(f"model.layers.3.{name}.weight") for name in ("self_attn.k_proj", "self_attn.o_proj")]
    for weight in weights:
        for nbits in (2, 3, 4, 8):
            for axis in (0, 1):
                assert_same_as_hqq(weight, nbits, 64, axis)
