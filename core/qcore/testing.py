"""The conformance suite every plugin's tests reuse.

In a plugin's ``tests/test_conformance.py``::

    from qcore.testing import PluginConformance

    class TestConformance(PluginConformance):
        preset = "example-int8"          # or override make_config()
        max_relative_error = 0.05        # how far the quantized logits may drift from float

pytest then runs every ``test_*`` below against the plugin, on tiny random llamas
(needs transformers: ``pip install 'qcore[hf]'``): the plain one, one with biases in
float16 and bfloat16, one with a tied output head that is quantized too, one whose
MLP width (200) is no multiple of any group size, per-module overrides, and checkpoints
whose companion tensors have the wrong shape or dtype. Methods that need calibration
data override :meth:`PluginConformance.quantize_float_checkpoint`.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import qcore
from qcore.checkpoint import Checkpoint
from qcore.config import QuantizationConfig
from qcore.errors import CalibrationError, CheckpointError, ConfigError, CorruptCheckpointError, QcoreError
from qcore.int4 import FloatDecodeLinear
from qcore.modules import get_module


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (Frobenius)."""
    actual, expected = actual.detach().float(), expected.detach().float()
    return float((actual - expected).norm() / expected.norm().clamp(min=1e-12))


def rewrite_checkpoint(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a single-file checkpoint to ``dst`` with ``edit(tensors)`` applied to its tensor dict."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


class PluginConformance:
    """Reusable tests; subclass and set :attr:`preset` (or override :meth:`make_config`)."""

    preset: ClassVar[str | None] = None
    max_relative_error: ClassVar[float] = 0.1
    model_overrides: ClassVar[dict[str, Any]] = {}

    # --- what a plugin's subclass may override ---------------------------------------------
    def make_config(self) -> QuantizationConfig:
        if self.preset is None:
            raise NotImplementedError("set `preset` or override make_config() in your conformance test class")
        return qcore.plugins.preset_config(self.preset)

    def quantize_float_checkpoint(self, float_dir: Path, config: QuantizationConfig) -> torch.nn.Module:
        """Quantize the float checkpoint (on the fly by default)."""
        return qcore.load_quantized(float_dir, quantization_config=config, progress=False)

    # --- fixtures ----------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def workdir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """A directory shared by the tests of one conformance class."""
        return tmp_path_factory.mktemp(cls.__name__)

    @pytest.fixture(scope="class")
    @classmethod
    def float_model(cls, workdir: Path) -> tuple[torch.nn.Module, Path]:
        """A tiny random llama (no biases, untied head, float32) and its checkpoint written by transformers."""
        from qcore.testdata import tiny_llama

        model = tiny_llama(**cls.model_overrides)
        model.save_pretrained(workdir / "float")
        return model, workdir / "float"

    @pytest.fixture(scope="class")
    @classmethod
    def quantized(cls, float_model: tuple[torch.nn.Module, Path], workdir: Path) -> tuple[torch.nn.Module, Path]:
        """The float model quantized with the plugin's config, and the checkpoint qcore saved from it."""
        suite = cls()
        model = suite.quantize_float_checkpoint(float_model[1], suite.make_config())
        path = qcore.save_quantized(model, workdir / "quantized")
        return model, path

    @pytest.fixture(scope="class")
    @classmethod
    def tokens(cls) -> torch.Tensor:
        """Two sequences of 24 random token ids (seeded)."""
        return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))

    # --- the tests ---------------------------------------------------------------------------
    def test_config_round_trip(self) -> None:
        config = self.make_config()
        data = json.loads(json.dumps(config.to_dict()))
        again = type(config).from_dict(data)
        assert again == config
        assert data["quant_method"] == config.quant_method

    def test_misspelled_config_key_is_an_error(self) -> None:
        config = self.make_config()
        field = config.field_names()[0]
        with pytest.raises(ConfigError, match="did you mean"):
            qcore.config(config.quant_method, **{field + "x": 1})

    def test_modules_are_converted_and_lm_head_kept(self, quantized: Any) -> None:
        model, _ = quantized
        assert model.qcore_modules, "no module was quantized"
        assert "lm_head" not in model.qcore_modules
        for name in model.qcore_modules:
            assert type(get_module(model, name)) is not torch.nn.Linear, f"{name} is still a float nn.Linear"

    def test_quantized_logits_close_to_float(self, float_model: Any, quantized: Any, tokens: torch.Tensor) -> None:
        with torch.no_grad():
            err = relative_error(quantized[0](tokens).logits, float_model[0](tokens).logits)
        assert err < self.max_relative_error, f"relative logit error {err:.4f}"

    def test_save_load_round_trip_is_exact(self, quantized: Any, tokens: torch.Tensor) -> None:
        model, path = quantized
        loaded = qcore.load_quantized(path, progress=False)
        with torch.no_grad():
            assert torch.equal(loaded(tokens).logits, model(tokens).logits)
        assert loaded.qcore_config == model.qcore_config

    def test_saving_after_inference_gives_the_same_checkpoint(self, quantized: Any, tokens: torch.Tensor, workdir: Path) -> None:
        from safetensors.torch import load_file

        model, path = quantized
        with torch.no_grad():
            model(tokens)
        again = qcore.save_quantized(model, workdir / "after-inference", overwrite=True)
        before, after = load_file(str(path / "model.safetensors")), load_file(str(again / "model.safetensors"))
        assert before.keys() == after.keys()
        for name in before:
            assert torch.equal(before[name], after[name]), f"{name} changed after inference"

    def test_streaming_one_tensor_per_shard(self, quantized: Any, tokens: torch.Tensor, workdir: Path) -> None:
        """Every tensor in its own shard: a module's companion tensors are spread over several files."""
        model, _ = quantized
        path = qcore.save_quantized(model, workdir / "sharded", max_shard_size=1, overwrite=True)
        ckpt = Checkpoint(path)
        assert len(ckpt.shards) == len(ckpt.tensors) > 1
        loaded = qcore.load_quantized(path, progress=False)
        with torch.no_grad():
            assert torch.equal(loaded(tokens).logits, model(tokens).logits)

    def test_skeleton_stays_on_meta(self, float_model: Any) -> None:
        from accelerate import init_empty_weights

        from qcore.plugins import registry
        from qcore.targeting import select_modules

        config = self.make_config()
        with init_empty_weights():
            skeleton = type(float_model[0])(float_model[0].config)
        modules = select_modules(skeleton, config)
        registry().hook(config).process_before_weight_loading(model=skeleton, config=config, modules=modules,
                                                              pre_quantized=True, metadata={})
        for name in modules:
            for tname, t in list(get_module(skeleton, name).named_parameters()) + list(get_module(skeleton, name).named_buffers()):
                assert t.device.type == "meta", f"{name}.{tname} was allocated on {t.device} before loading"

    def test_dequantize_close_to_float_weights(self, float_model: Any, workdir: Path) -> None:
        model = self.quantize_float_checkpoint(float_model[1], self.make_config())
        names = list(model.qcore_modules)
        qcore.dequantize(model)
        for name in names:
            restored = get_module(model, name)
            assert isinstance(restored, torch.nn.Linear)
            err = relative_error(restored.weight, get_module(float_model[0], name).weight)
            assert err < self.max_relative_error, f"{name}: dequantized weight relative error {err:.4f}"

    def test_truncated_shard_is_reported(self, quantized: Any, workdir: Path) -> None:
        _, path = quantized
        broken = workdir / "truncated"
        broken.mkdir(exist_ok=True)
        data = (path / "model.safetensors").read_bytes()
        (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
        (broken / "config.json").write_text((path / "config.json").read_text())
        with pytest.raises(CorruptCheckpointError, match="truncated"):
            qcore.load_quantized(broken, progress=False)

    def test_lying_header_is_reported(self, quantized: Any, workdir: Path) -> None:
        """A header whose byte range for a tensor disagrees with its shape is caught by the offset check."""
        _, path = quantized
        data = bytearray((path / "model.safetensors").read_bytes())
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        name = next(k for k in header if k != "__metadata__")
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin, end + 1]
        raw = json.dumps(header).encode()
        broken = workdir / "lying"
        broken.mkdir(exist_ok=True)
        (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
        (broken / "config.json").write_text((path / "config.json").read_text())
        with pytest.raises(CorruptCheckpointError, match=f"{name!r}.* needs \\d+ bytes but its offsets span"):
            qcore.load_quantized(broken, progress=False)

    def test_missing_companion_tensor_names_the_module(self, quantized: Any, workdir: Path) -> None:
        model, path = quantized
        module_name = next(iter(model.qcore_modules))
        ckpt = Checkpoint(path)
        companions = [k for k in ckpt.tensors if k.startswith(module_name + ".") and k[len(module_name) + 1 :] not in ("weight", "bias")]
        assert companions, f"{module_name} has no companion tensors to remove"
        victim = max(companions, key=lambda k: (math.prod(ckpt.tensors[k].shape), k))  # the largest: surely essential
        broken = rewrite_checkpoint(path, workdir / "missing", lambda t: t.pop(victim))
        with pytest.raises(CheckpointError, match=module_name.replace(".", r"\.")):
            qcore.load_quantized(broken, progress=False)

    # --- model variants: biases, half precision, a tied head, odd widths, overrides -------------
    def _variant(self, workdir: Path, name: str, **overrides: Any) -> tuple[torch.nn.Module, Path]:
        from qcore.testdata import tiny_llama

        model = tiny_llama(**{**self.model_overrides, **overrides})
        path = workdir / name
        if not path.exists():
            model.save_pretrained(path)
        return model, path

    def _load_variant(self, path: Path, config: QuantizationConfig, **kwargs: Any) -> torch.nn.Module:
        """Load + quantize a variant as the plugin's tests quantize (on the fly, or via calibration)."""
        if not kwargs:
            return self.quantize_float_checkpoint(path, config)
        if type(config).requires_calibration:
            model = qcore.load_quantized(path, progress=False, **kwargs)
            ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
            return qcore.quantize(model, config, calibration=ids, progress=False)
        return qcore.load_quantized(path, quantization_config=config, progress=False, **kwargs)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_biases_under_half_precision(self, workdir: Path, tokens: torch.Tensor, dtype: torch.dtype) -> None:
        """A model with biases everywhere, loaded with torch_dtype=float16/bfloat16: every float part (biases,
        outputs) is in that dtype, and the logits stay close to the float32 model's."""
        float_model, path = self._variant(workdir, "biased", attention_bias=True, mlp_bias=True)
        model = self._load_variant(path, self.make_config(), torch_dtype=dtype)
        assert model.qcore_modules
        with torch.no_grad():
            logits = model(tokens).logits
            expected = float_model(tokens).logits
        assert logits.dtype == dtype, f"logits are {logits.dtype} under torch_dtype={dtype}"
        for name in model.qcore_modules:
            bias = getattr(get_module(model, name), "bias", None)
            if isinstance(bias, torch.Tensor):
                assert bias.dtype == dtype, f"{name}.bias stayed {bias.dtype} under torch_dtype={dtype}"
        err = relative_error(logits, expected)
        assert err < self.max_relative_error + 0.05, f"relative logit error {err:.4f} in {dtype}"

    def test_tied_head_is_quantized_while_loading(self, workdir: Path, tokens: torch.Tensor) -> None:
        """tie_word_embeddings=True and modules_to_not_convert=[]: the head (absent from the checkpoint, tied to
        the embedding) is quantized too, the same as qcore.quantize does in memory, and saves and reloads exactly."""
        float_model, path = self._variant(workdir, "tied", tie_word_embeddings=True)
        config = self.make_config().replace(modules_to_not_convert=[])
        if type(config).requires_calibration:  # the head is outside the decoder blocks
            with pytest.raises(CalibrationError, match="lm_head"):
                self._load_variant(path, config, torch_dtype=torch.float32)
            return
        model = qcore.load_quantized(path, quantization_config=config, progress=False)
        assert "lm_head" in model.qcore_modules and type(model.lm_head) is not torch.nn.Linear
        in_memory = qcore.quantize(qcore.load_quantized(path, progress=False), config)
        with torch.no_grad():
            logits = model(tokens).logits
            assert torch.equal(logits, in_memory(tokens).logits), "loading and qcore.quantize disagree"
            err = relative_error(logits, float_model(tokens).logits)
        assert err < self.max_relative_error * 2, f"relative logit error {err:.4f}"
        saved = qcore.save_quantized(model, workdir / "tied-quantized", overwrite=True)
        again = qcore.load_quantized(saved, progress=False)
        with torch.no_grad():
            assert torch.equal(again(tokens).logits, logits)

    def test_widths_that_are_no_multiple_of_a_group(self, workdir: Path, tokens: torch.Tensor) -> None:
        """An MLP width of 200 (a partial last group for any group size above 8): the plugin either quantizes it
        correctly or refuses with a ConfigError that names a module, before any quantized tensor exists."""
        float_model, path = self._variant(workdir, "odd", intermediate_size=200)
        try:
            model = self._load_variant(path, self.make_config())
        except ConfigError as exc:
            assert "mlp" in str(exc), f"the error does not name the module: {exc}"
            return
        with torch.no_grad():
            err = relative_error(model(tokens).logits, float_model(tokens).logits)
        assert err < self.max_relative_error, f"relative logit error {err:.4f}"

    def test_per_module_override_skips_a_module(self, float_model: Any, tokens: torch.Tensor) -> None:
        """module_overrides {"down_proj": {"skip": True}} keeps every down_proj in float and converts the rest."""
        config = self.make_config().replace(module_overrides={"down_proj": {"skip": True}})
        model = self._load_variant(float_model[1], config)
        assert model.qcore_modules and not any(n.endswith("down_proj") for n in model.qcore_modules)
        for name, module in model.named_modules():
            if name.endswith("down_proj"):  # float: nn.Linear, or the same on the plugin's float32 GEMV
                assert type(module) in (torch.nn.Linear, FloatDecodeLinear) and type(module.weight) is torch.nn.Parameter
                assert module.weight.dtype.is_floating_point
        with torch.no_grad():
            err = relative_error(model(tokens).logits, float_model[0](tokens).logits)
        assert err < self.max_relative_error

    def test_companions_with_wrong_dtype_or_shape_are_refused(self, quantized: Any, workdir: Path) -> None:
        """Every tensor of a quantized module stored with another dtype (float <-> integer) or one element more
        is refused with a qcore error naming the module: never loaded silently into wrong numbers."""
        model, path = quantized
        module_name = next(iter(model.qcore_modules))
        ckpt = Checkpoint(path)
        names = [k for k in ckpt.tensors if k.startswith(module_name + ".") and not k.endswith(".bias")]

        def flip_dtype(t: torch.Tensor) -> torch.Tensor:
            return t.float().to(torch.int32) if t.dtype.is_floating_point else t.to(torch.float32)

        def one_more(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t.reshape(-1), t.reshape(-1)[:1]]) if t.dim() <= 1 else torch.cat([t, t[:1]])

        for victim in names:
            for how, change in (("dtype", flip_dtype), ("shape", one_more)):
                def edit(tensors: dict[str, torch.Tensor], victim: str = victim, change: Any = change) -> None:
                    tensors[victim] = change(tensors[victim])

                broken = rewrite_checkpoint(path, workdir / f"bad-{how}", edit)
                with pytest.raises(QcoreError, match=module_name.replace(".", r"\.")) as info:
                    qcore.load_quantized(broken, progress=False)
                assert info.value is not None, f"{victim} with the wrong {how} loaded silently"


def without_native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the rest of a test, run as a plugin installed without a C compiler: ``QCORE_NATIVE=0`` and the
    loaded-library cache emptied (both restored by ``monkeypatch``), so every plugin's ops run their torch
    definitions."""
    from qcore import native

    monkeypatch.setenv("QCORE_NATIVE", "0")
    monkeypatch.setattr(native, "_loaded", {})


class LookupOpsSafety:
    """The crash tests of a plugin whose binary builds the shared lookup kernels (``QC_LUT4_EXPORTS``) and whose
    ``<package>.ops`` registers them under ``torch.ops.<package>`` (docs/kernels.md, "Memory safety").

    Subclass it in the plugin's tests with ``package = "qcore_<name>"``: every case of
    :func:`qcore.lut4_misuse.misuse_cases` must raise a Python exception in a subprocess that stays alive, and
    every op has a fake implementation (meta tensors, ``torch.compile``) that ``torch.library.opcheck`` accepts.
    """

    package: ClassVar[str]
    ops: ClassVar[tuple[str, ...]] = ("lut4_gemm", "lut4_gemm_affine", "lut4_dequantize", "int8_gemm", "f32_gemm")

    def test_wrong_sizes_strides_dtypes_and_devices_raise_and_never_crash(self) -> None:
        import importlib

        from qcore.lut4_misuse import run_in_subprocess

        out = run_in_subprocess(self.package)
        lines = out.splitlines()
        assert "ACCEPTED" not in out, out
        bound = hasattr(importlib.import_module(f"{self.package}.ops"), "OPS")  # plugin_ops' KernelOps: bound calls too
        assert sum(ln.startswith("ok valid") for ln in lines) == (8 if bound else 6), out
        assert sum(ln.startswith("raised") for ln in lines) >= 40, out
        assert (f"raised 64-byte packed claiming (65536, 4096) | {self.package}.lut4_gemm: packed has shape [64], "
                "expected [134217728]") in out

    def test_ops_have_fake_implementations_for_meta_tensors_and_compile(self) -> None:
        import importlib

        importlib.import_module(f"{self.package}.ops")  # registers the ops
        ops = getattr(torch.ops, self.package)
        n, k, bs = 32, 128, 64
        packed, absmax, code = (torch.empty(n * k // 2, dtype=torch.uint8, device="meta"),
                                torch.empty(n * k // bs, device="meta"), torch.empty(16, device="meta"))
        real_packed = torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8)
        real_absmax, real_code = torch.rand(n * k // bs), torch.randn(16)
        for op in self.ops:
            if op == "int8_gemm":
                y = ops.int8_gemm(torch.empty(3, k, device="meta"), torch.empty(n, k, dtype=torch.int8, device="meta"),
                                  torch.empty(n, device="meta"))
                real = (torch.randn(2, k), torch.randint(-128, 128, (n, k), dtype=torch.int8), torch.rand(n))
            elif op == "f32_gemm":
                y = ops.f32_gemm(torch.empty(3, k, device="meta"), torch.empty(n, k, device="meta"))
                real = (torch.randn(2, k), torch.randn(n, k))
            elif op == "lut4_gemm_affine":
                y = ops.lut4_gemm_affine(torch.empty(3, k, device="meta"), packed, absmax, code,
                                         torch.empty(n * k // bs, device="meta"), n, k, bs)
                real = (torch.randn(2, k), real_packed, real_absmax, real_code, torch.randn(n * k // bs), n, k, bs)
            elif op == "lut4_gemm":
                y = ops.lut4_gemm(torch.empty(3, k, device="meta"), packed, absmax, code, n, k, bs)
                real = (torch.randn(2, k), real_packed, real_absmax, real_code, n, k, bs)
            else:
                ops.lut4_dequantize(packed, absmax, code, n, k, bs, torch.empty(n, k, device="meta"))
                y, real = None, (real_packed, real_absmax, real_code, n, k, bs, torch.empty(n, k))
            if y is not None:
                assert y.shape == (3, n) and y.device.type == "meta", op
            torch.library.opcheck(getattr(ops, op), real)
