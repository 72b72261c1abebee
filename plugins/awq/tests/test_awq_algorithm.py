"""AWQ's per-block choices (scale ratios, clip thresholds) against AutoAWQ 0.2.9 on the same inputs."""

import types

import pytest
import torch

import qcore
from qcore_awq import block as awq_block

awq_quantizer = pytest.importorskip("awq.quantize.quantizer", reason="the AutoAWQ oracle (autoawq==0.2.9) is not installed")

GROUP_SIZE = 32


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    from qcore.testdata import tiny_llama

    # 4 kv heads: v_proj and o_proj are both (64, 64), so the v -> o scale group is searched too
    path = tmp_path_factory.mktemp("awq-oracle") / "float"
    tiny_llama(num_key_value_heads=4, seed=3).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def calibration_ids():
    return torch.randint(0, 256, (16, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def qcore_blocks(float_dir, calibration_ids):
    """What qcore's AWQ chose for each block (each BlockRun's result, in order)."""
    results = []
    original = awq_block.BlockRun.run

    def spy(self):
        out = original(self)
        results.append(self.result)
        return out

    awq_block.BlockRun.run = spy
    try:
        model = qcore.load_quantized(float_dir, progress=False)
        qcore.quantize(model, qcore.config("awq", group_size=GROUP_SIZE), calibration=calibration_ids, progress=False)
    finally:
        awq_block.BlockRun.run = original
    return results


@pytest.fixture(scope="module")
def qcore_block0(qcore_blocks):
    return qcore_blocks[0]


def capture_block_inputs(model, layer, ids):
    """The hidden states and keyword arguments ``layer`` receives when ``model`` runs ``ids`` as one batch."""
    captured = {}

    def capture(_module, args, kwargs):
        captured["x"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise StopIteration

    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    except StopIteration:
        pass
    finally:
        handle.remove()
    return captured["x"], captured["kwargs"]


def autoawq_choices(layer, x, kwargs, group_size):
    """AutoAWQ's AwqQuantizer steps 1-3 (input features, scale search and folding, clip search) on one block.

    :returns: ({linear names: scales}, {linear name: clip thresholds}).
    """
    from awq.models.llama import LlamaAWQForCausalLM
    from awq.quantize.scale import apply_scale
    from awq.utils.module import get_named_linears

    quantizer = awq_quantizer.AwqQuantizer.__new__(awq_quantizer.AwqQuantizer)
    quantizer.awq_model = types.SimpleNamespace(model_type="llama",
                                                get_layers_for_scaling=LlamaAWQForCausalLM.get_layers_for_scaling)
    quantizer.w_bit, quantizer.group_size, quantizer.zero_point, quantizer.duo_scaling = 4, group_size, True, True
    quantizer.max_chunk_memory, quantizer.n_parallel_calib_samples = 1024 * 1024 * 1024, None
    quantizer.inps, quantizer.module_kwargs = x, kwargs
    named_linears = get_named_linears(layer)
    # AutoAWQ snapshots the inspected module with {k: v.cpu() for k, v in state_dict()}: a copy on a GPU, but on
    # the CPU the very tensors its grid loop then scales in place (fc.weight.mul_), so from the second ratio
    # on every candidate is judged on weights scaled by all earlier ratios. The oracle runs as on a GPU: with
    # a snapshot that copies.
    state_dict = torch.nn.Module.state_dict

    def copying_state_dict(self, *args, **kwargs):
        return {k: v.clone() for k, v in state_dict(self, *args, **kwargs).items()}

    torch.nn.Module.state_dict = copying_state_dict
    try:
        with torch.no_grad():
            input_feat = quantizer._get_input_feat(layer, named_linears)
            groups = LlamaAWQForCausalLM.get_layers_for_scaling(layer, input_feat, quantizer.module_kwargs)
            scales = [quantizer._search_best_scale(layer, **group) for group in groups]
            apply_scale(layer, scales, input_feat_dict=input_feat)
            clips = quantizer._search_best_clip(layer, named_linears, input_feat)
    finally:
        torch.nn.Module.state_dict = state_dict
    return {names: s for _, names, s in scales}, dict(clips)


@pytest.fixture(scope="module")
def autoawq_block0(float_dir, calibration_ids):
    """AutoAWQ on block 0, fed the block's inputs as its init_quant captures them (all windows in one batch)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(float_dir, dtype=torch.float32).eval()
    x, kwargs = capture_block_inputs(model, model.model.layers[0], calibration_ids)
    return autoawq_choices(model.model.layers[0], x, kwargs, GROUP_SIZE)


@pytest.fixture(scope="module")
def autoawq_block1(float_dir, calibration_ids):
    """AutoAWQ on block 1, fed what its quantize loop feeds it: block 0's outputs before block 0 was scaled and
    quantized, i.e. the float model's activations at block 1."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(float_dir, dtype=torch.float32).eval()
    x, kwargs = capture_block_inputs(model, model.model.layers[1], calibration_ids)
    return autoawq_choices(model.model.layers[1], x, kwargs, GROUP_SIZE)


def assert_same_choices(ours, theirs, min_same_clips=1.0):
    """Same scales for every group; the same clip threshold for (at least ``min_same_clips`` of) every
    (output channel, group): qcore sums x*w with a batched matmul, AutoAWQ element by element, so a
    near-tie between two thresholds may fall the other way."""
    scales, clips = theirs
    assert set(scales) == set(ours.searches)
    for names, s in scales.items():
        assert torch.allclose(ours.searches[names].scales, s, rtol=1e-5, atol=0), names
    assert set(clips) == set(ours.clips)
    for name, max_val in clips.items():
        assert ours.clips[name].shape == max_val.shape, name
        same = torch.isclose(ours.clips[name], max_val, rtol=1e-6, atol=0).float().mean().item()
        assert same >= min_same_clips, (name, same)


def test_scale_ratios_match_autoawq(qcore_block0, autoawq_block0):
    theirs, _ = autoawq_block0
    assert set(theirs) == set(qcore_block0.searches) == {
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)}
    for names, scales in theirs.items():
        ours = qcore_block0.searches[names]
        assert torch.allclose(ours.scales, scales, rtol=1e-5, atol=0), names
        # the reported ratio is the one whose loss was smallest
        assert min(ours.losses) == ours.losses[int(round(ours.ratio * 20))]
    assert any(r > 0 for r in qcore_block0.ratios.values()), "every group chose ratio 0: the test would not see scaling"


def test_clip_thresholds_match_autoawq(qcore_block0, autoawq_block0):
    assert set(autoawq_block0[1]) == {"self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    assert_same_choices(qcore_block0, autoawq_block0)


def test_the_next_block_is_searched_on_float_activations_as_autoawq_does(qcore_blocks, autoawq_block1):
    assert len(qcore_blocks) >= 2
    assert_same_choices(qcore_blocks[1], autoawq_block1)


@pytest.mark.slow
def test_real_smollm2_block_matches_autoawq():
    """Block 5 of SmolLM2-135M (grouped-query attention: no v -> o group), 4 windows of 128 calibration tokens."""
    import copy

    from transformers import AutoTokenizer, LlamaForCausalLM

    from qcore.calibration import calibration_windows
    from qcore.testdata import calibration_text, smollm2_checkpoint
    from qcore_awq.arch import LLAMA_LIKE, active_groups

    path = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = torch.cat(calibration_windows(calibration_text(), tokenizer, 4, 128))
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    layer = model.model.layers[5]
    x, kwargs = capture_block_inputs(model, layer, ids)
    ours = copy.deepcopy(layer)
    names = [n for n, m in ours.named_modules() if isinstance(m, torch.nn.Linear)]
    run = awq_block.BlockRun(ours, active_groups(ours, LLAMA_LIKE, set(names)), dict.fromkeys(names, 64))
    handles = [ours.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: run.add_batch(n, a[0])) for n in names]
    with torch.no_grad():
        for i in range(0, ids.shape[0], 2):  # two batches, as the driver would run them
            ours(x[i:i + 2], **kwargs)
    for handle in handles:
        handle.remove()
    run.run()
    assert ("self_attn.o_proj",) not in run.result.searches  # v (192 x 576) and o (576 x 576) differ
    assert_same_choices(run.result, autoawq_choices(layer, x, kwargs, 64), min_same_clips=0.99)
