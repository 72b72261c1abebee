"""Int4WeightOnlyConfig (torchao's plain ``Int4Tensor``) quantized and run on a CPU without mslk.

The truth here is (a) a reference written from the format's description (element by element, not
vectorized like the plugin), (b) torchao's own CPU-runnable code for the same math
(``torchao.prototype.gptq.api._int4_row_dequantize_zp`` / ``_int4_row_quantize_zp_precomputed_qparams``),
(c) torchao's own ``Int4Tensor.from_hp`` run through ``quantize_`` with mslk's two functions stood in
by the reference, and (d) torchao's and transformers' safetensors loaders. What cannot run here:
torchao's int4 linear (``torch.ops.mslk.bf16i4bf16_rowwise``, CUDA only) and mslk's own
``int4_row_quantize_zp`` / ``pack_int4`` (mslk ships CUDA wheels only).
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import qcore
from qcore.errors import ConfigError
from qcore.testing import without_native_kernels
from qcore_torchao import int4_plain
from qcore_torchao.linear import TorchAoLinear

GROUP = 32


def reference_quantize(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the format's description, group by group: q int8 (N, K) in [-8, 7]; scale, zero_point (K/g, N) float32."""
    n, k = w.shape
    q = torch.empty(n, k, dtype=torch.int8)
    scale = torch.empty(k // group, n)
    zero = torch.empty(k // group, n)
    for row in range(n):
        for g in range(k // group):
            chunk = w[row, g * group:(g + 1) * group].float()
            lo, hi = chunk.min(), chunk.max()
            s = torch.clamp(hi - lo, min=1e-6) / 15
            q[row, g * group:(g + 1) * group] = (torch.clamp(torch.round((chunk - lo) / s), 0, 15) - 8).to(torch.int8)
            scale[g, row], zero[g, row] = s, lo + 8 * s
    return q, scale, zero


def reference_pack(q: torch.Tensor) -> torch.Tensor:
    """Byte j of a row: value 2j in bits 0-3, value 2j+1 in bits 4-7 (two's complement nibbles), as int8."""
    rows = []
    for row in q.tolist():
        packed = bytes(((row[2 * j] & 0xF) | ((row[2 * j + 1] & 0xF) << 4)) for j in range(len(row) // 2))
        rows.append(list(struct.unpack(f"{len(packed)}b", packed)))
    return torch.tensor(rows, dtype=torch.int8)


def reference_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    g = torch.arange(q.shape[1]) // group
    return q.double() * scale.double().T[:, g] + zero.double().T[:, g]


def test_quantizer_equals_the_reference_on_random_data():
    torch.manual_seed(0)
    w = torch.randn(24, 128) * torch.rand(24, 1) * 3
    w[3, :GROUP] = 0.25  # a constant group: the 1e-6 floor on the range
    q, scale, zero = int4_plain.int4_row_quantize_zp(w, GROUP)
    ref_q, ref_scale, ref_zero = reference_quantize(w, GROUP)
    assert q.dtype == torch.int8 and scale.shape == zero.shape == (128 // GROUP, 24)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)
    assert int(q.min()) == -8 and int(q.max()) == 7
    assert torch.equal(int4_plain.pack_int4(q), reference_pack(q))
    assert torch.equal(int4_plain.unpack_int4(int4_plain.pack_int4(q)), (q.to(torch.int16) + 8).to(torch.uint8))


def test_quantizer_agrees_with_torchaos_own_cpu_helpers():
    """torchao's GPTQ module holds CPU code for the same format: its quantizer with our scale/zero gives
    our codes, its dequantizer gives our W."""
    from torchao.prototype.gptq.api import _int4_row_dequantize_zp, _int4_row_quantize_zp_precomputed_qparams

    torch.manual_seed(1)
    w = torch.randn(32, 256)
    q, scale, zero = int4_plain.int4_row_quantize_zp(w, GROUP)
    theirs = _int4_row_quantize_zp_precomputed_qparams(w, scale, zero, GROUP)
    assert (theirs != q).sum() <= 2  # they recompute min = zero - 8 * scale: a float32 ulp can flip a .5 tie
    weight = int4_plain.int4_tensor(w, GROUP)
    torch.testing.assert_close(int4_plain.dequantize(weight), _int4_row_dequantize_zp(q, scale, zero, GROUP),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(int4_plain.dequantize(weight).double(), reference_dequantize(q, scale, zero, GROUP),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tensor_is_what_torchaos_from_hp_makes(dtype, monkeypatch):
    """torchao's own Int4WeightOnlyConfig handler and Int4Tensor.from_hp, with mslk's two functions stood in by
    the reference above, make the same tensors, attributes and safetensors JSON as the plugin."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_
    from torchao.quantization.quantize_.workflows.int4 import int4_tensor as ao_int4

    from qcore_torchao.format import weight_metadata

    def mslk_standin(x, group_size=128):
        return reference_quantize(x, group_size)

    monkeypatch.setattr(ao_int4, "int4_row_quantize_zp", mslk_standin)
    monkeypatch.setattr(ao_int4, "pack_int4", reference_pack)
    torch.manual_seed(2)
    linear = nn.Linear(64, 16, bias=False).to(dtype)
    w = linear.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(linear, Int4WeightOnlyConfig(group_size=GROUP))
    theirs = linear.weight
    ours = int4_plain.int4_tensor(w, GROUP)
    assert type(theirs).__name__ == type(ours).__name__ == "Int4Tensor"
    for name in ("qdata", "scale", "zero_point"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
        assert a.is_contiguous()
    assert ours.dtype == theirs.dtype == dtype and ours.block_size == theirs.block_size
    assert weight_metadata(ours) == weight_metadata(theirs)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _metadata(path: Path) -> dict[str, str]:
    data = (path / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length])["__metadata__"]


@pytest.fixture(scope="module")
def int4_dirs(float_dir, tmp_path_factory):
    from torchao.quantization import Int4WeightOnlyConfig

    root = tmp_path_factory.mktemp("int4")
    model = qcore.load_quantized(float_dir, quantization_config=qcore.config(
        "torchao", quant_type=Int4WeightOnlyConfig(group_size=GROUP)), progress=False)
    first = qcore.save_quantized(model, root / "first")
    again = qcore.save_quantized(qcore.load_quantized(first, progress=False), root / "again")
    return model, first, again


def test_checkpoint_round_trips_byte_identical_in_qcore(int4_dirs, tokens):
    """Every tensor byte and header entry is identical; the metadata holds the same keys and values (the
    safetensors library writes the metadata map in hash order, which differs between any two writes)."""
    model, first, again = int4_dirs
    files = [(p / "model.safetensors").read_bytes() for p in (first, again)]
    headers = [json.loads(f[8:8 + struct.unpack("<Q", f[:8])[0]]) for f in files]
    assert headers[0].pop("__metadata__") == headers[1].pop("__metadata__")
    assert headers[0] == headers[1]  # names, dtypes, shapes and offsets
    assert files[0][8 + struct.unpack("<Q", files[0][:8])[0]:] == files[1][8 + struct.unpack("<Q", files[1][:8])[0]:]
    assert json.loads((first / "config.json").read_text())["quantization_config"]["quant_type"]["default"]["_type"] \
        == "Int4WeightOnlyConfig"
    reloaded = qcore.load_quantized(first, progress=False)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, model(tokens).logits)


def test_checkpoint_holds_the_reference_tensors_in_torchaos_layout(int4_dirs, tiny_float_model):
    _, first, _ = int4_dirs
    tensors, metadata = _tensors(first), _metadata(first)
    name = "model.layers.1.mlp.down_proj"
    w = tiny_float_model.get_submodule(name).weight.detach()
    q, scale, zero = reference_quantize(w, GROUP)
    assert torch.equal(tensors[f"{name}._weight_qdata"], reference_pack(q))
    assert torch.equal(tensors[f"{name}._weight_scale"], scale)
    assert torch.equal(tensors[f"{name}._weight_zero_point"], zero)
    assert json.loads(metadata[f"{name}.weight"]) == {
        "_type": "Int4Tensor",
        "_data": {"activation_dtype": {"_type": "torch.dtype", "_data": "bfloat16"}, "block_size": [1, GROUP],
                  "shape": list(w.shape)},
        "_tensor_data_names": ["qdata", "scale", "zero_point"]}
    assert f"{name}.weight" in json.loads(metadata["tensor_names"])


def test_torchao_and_transformers_load_the_checkpoint_on_cpu(int4_dirs):
    """torchao's unflatten_tensor_state_dict and transformers' from_pretrained rebuild the same Int4Tensors
    (running them is mslk's CUDA kernel: not possible here)."""
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from torchao_helpers import hf_load

    model, first, _ = int4_dirs
    unflat, leftover = unflatten_tensor_state_dict(_tensors(first), _metadata(first))
    assert not leftover
    hf = hf_load(first)
    for name in model.qcore_modules:
        ours = model.get_submodule(name).weight
        for theirs in (unflat[f"{name}.weight"], hf.get_submodule(name).weight):
            assert type(theirs).__name__ == "Int4Tensor" and theirs.block_size == ours.block_size
            for attr in ("qdata", "scale", "zero_point"):
                assert torch.equal(getattr(theirs, attr), getattr(ours, attr)), f"{name}.{attr}"


def test_logits_match_the_float_model_with_the_reference_weights(int4_dirs, tiny_float_model, tokens):
    """Prefill (many rows) and decode (one row) on qcore's kernels equal the float model holding the reference
    dequantized W, and stay near the float model itself."""
    import copy

    model, _, _ = int4_dirs
    reference = copy.deepcopy(tiny_float_model)
    for name in model.qcore_modules:
        linear = reference.get_submodule(name)
        q, scale, zero = reference_quantize(linear.weight.detach(), GROUP)
        linear.weight.data = reference_dequantize(q, scale, zero, GROUP).float()
        assert isinstance(model.get_submodule(name), TorchAoLinear)
    with torch.no_grad():
        for x in (tokens, tokens[:1, :1]):
            got = model(x).logits
            torch.testing.assert_close(got, reference(x).logits, rtol=1e-4, atol=1e-4)
            floats = tiny_float_model(x).logits
            assert (got - floats).abs().max() < 0.25 * floats.abs().max()


def test_bfloat16_model_keeps_bfloat16_scales_and_runs(float_dir, tokens):
    from torchao.quantization import Int4WeightOnlyConfig

    model = qcore.load_quantized(float_dir, quantization_config=qcore.config(
        "torchao", quant_type=Int4WeightOnlyConfig(group_size=GROUP)), torch_dtype=torch.bfloat16, progress=False)
    weight = model.get_submodule("model.layers.0.self_attn.q_proj").weight
    assert weight.scale.dtype == weight.zero_point.dtype == torch.bfloat16 and weight.qdata.dtype == torch.int8
    with torch.no_grad():
        assert torch.isfinite(model(tokens).logits.float()).all()


def test_dequantize_hook_gives_the_reference_weight(int4_dirs, tiny_float_model):
    _, first, _ = int4_dirs
    name = "model.layers.0.mlp.up_proj"
    linear = qcore.dequantize(qcore.load_quantized(first, progress=False)).get_submodule(name)
    assert type(linear) is nn.Linear
    q, scale, zero = reference_quantize(tiny_float_model.get_submodule(name).weight.detach(), GROUP)
    torch.testing.assert_close(linear.weight.double(), reference_dequantize(q, scale, zero, GROUP), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal; this machine has a CUDA GPU")
def test_cuda_only_int4_packing_is_refused_on_cpu(float_dir):
    from torchao.quantization import Int4WeightOnlyConfig

    config = qcore.config("torchao", quant_type=Int4WeightOnlyConfig(group_size=GROUP,
                                                                     int4_packing_format="tile_packed_to_4d"))
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.\w+\.\w+_proj.*tile_packed_to_4d.*CUDA"):
        qcore.load_quantized(float_dir, quantization_config=config, progress=False)


def test_int4_group_size_that_does_not_divide_a_layer_is_refused(float_dir):
    from torchao.quantization import Int4WeightOnlyConfig

    config = qcore.config("torchao", quant_type=Int4WeightOnlyConfig(group_size=256))
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.\w+\.\w+_proj.*group_size=256 does not divide"):
        qcore.load_quantized(float_dir, quantization_config=config, progress=False)


@pytest.mark.parametrize("rows", [1, 5, 20])
@pytest.mark.parametrize("native", [True, False])
def test_linear_on_qcore_kernels_matches_the_reference(monkeypatch, native, rows):
    """TorchAoLinear holding an Int4Tensor: the lookup kernel (float32), or without the binary torch's int4 GEMM
    in bfloat16 up to 8 rows and dequantize + matmul past that; bias added."""
    from qcore.testing import relative_error

    if not native:  # what a plugin installed without a C compiler gets
        without_native_kernels(monkeypatch)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 128, generator=g)
    linear = TorchAoLinear(128, 48, bias=True)
    linear.bias.data = torch.randn(48, generator=g)
    linear.set_weight(int4_plain.int4_tensor(w, GROUP))
    x = torch.randn(rows, 128, generator=g)
    q, scale, zero = reference_quantize(w, GROUP)
    expected = (x.double() @ reference_dequantize(q, scale, zero, GROUP).T + linear.bias.double()).float()
    with torch.no_grad():
        y = linear(x)
    kernel = linear._kernel()
    assert type(kernel).__name__ == ("Int4LutWeight" if native else "Int4PackWeight")
    bf16 = not native and rows <= kernel.max_rows
    assert relative_error(y, expected) < (6e-3 if bf16 else 1e-5)


def test_preset_is_what_torchao_serializes():
    from torchao.core.config import config_to_dict
    from torchao.quantization import Int4WeightOnlyConfig

    from qcore_torchao.plugin import PRESETS

    assert PRESETS["torchao-int4wo-g64"] == config_to_dict(Int4WeightOnlyConfig(group_size=64))
