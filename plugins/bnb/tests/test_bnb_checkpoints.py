"""Checkpoints move between transformers + bitsandbytes and qcore, both ways, with identical logits."""

import pytest
import torch
from bnb_helpers import QCORE_PRESET, upstream_model
from safetensors.torch import load_file

import qcore

KINDS = ["nf4", "fp4", "int8"]


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def upstream_checkpoints(float_dir, tmp_path_factory):
    """Checkpoints written by transformers + bitsandbytes (qcore never touched them)."""
    root = tmp_path_factory.mktemp("upstream")
    for kind in KINDS:
        upstream_model(float_dir, kind).save_pretrained(root / kind)
    return root


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_checkpoint_loads_with_identical_logits(upstream_checkpoints, kind, tokens):
    reference = upstream_model(upstream_checkpoints / kind)
    model = qcore.load_quantized(upstream_checkpoints / kind, progress=False)
    assert model.qcore_config.quant_method == "bitsandbytes"
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, reference(tokens).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_on_the_fly_quantization_writes_the_upstream_checkpoint(upstream_checkpoints, float_dir, kind, tmp_path):
    model = qcore.load_quantized(float_dir, QCORE_PRESET[kind], progress=False)
    ours = load_file(str(qcore.save_quantized(model, tmp_path / kind) / "model.safetensors"))
    theirs = load_file(str(upstream_checkpoints / kind / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_loads_our_checkpoint_with_identical_logits(float_dir, kind, tmp_path, tokens):
    model = qcore.load_quantized(float_dir, QCORE_PRESET[kind], progress=False)
    path = qcore.save_quantized(model, tmp_path / kind)
    theirs = upstream_model(path)
    with torch.no_grad():
        assert torch.equal(theirs(tokens).logits, model(tokens).logits)


def test_saving_after_inference_is_unchanged_unlike_bitsandbytes(float_dir, tmp_path, tokens):
    model = qcore.load_quantized(float_dir, "bnb-nf4", progress=False)
    before = load_file(str(qcore.save_quantized(model, tmp_path / "before") / "model.safetensors"))
    with torch.no_grad():
        model(tokens)
    after = load_file(str(qcore.save_quantized(model, tmp_path / "after") / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_smollm2_nf4_matches_bitsandbytes(tmp_path):
    """The real model: a transformers-written NF4 checkpoint loads with identical logits, and
    qcore's own NF4 quantization has the same perplexity as bitsandbytes' (within 1%)."""
    from transformers import AutoTokenizer

    from qcore.testdata import reference_text, smollm2_checkpoint

    float_dir = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(float_dir)
    ids = tokenizer(reference_text()[:6000], return_tensors="pt").input_ids[:, :512]
    upstream = upstream_model(float_dir, "nf4")
    upstream.save_pretrained(tmp_path / "bnb-nf4")
    loaded = qcore.load_quantized(tmp_path / "bnb-nf4", progress=False)
    with torch.no_grad():
        assert torch.equal(loaded(ids[:, :64]).logits, upstream(ids[:, :64]).logits)
        ours = qcore.load_quantized(float_dir, "bnb-nf4", progress=False)
        ppl_ours = torch.exp(ours(ids, labels=ids).loss)
        # bitsandbytes as users run it on this CPU (its default kernel)
        ppl_bnb = torch.exp(upstream_model(float_dir, "nf4", fp32_kernel=False)(ids, labels=ids).loss)
    assert abs(ppl_ours / ppl_bnb - 1) < 0.01, (ppl_ours, ppl_bnb)
