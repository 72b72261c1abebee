"""AwqConfig-compatible config (``quant_method: "awq"``)."""

from __future__ import annotations

from dataclasses import dataclass

from qcore.config import QuantizationConfig
from qcore.errors import ConfigError

LAYOUTS = ("gemm", "gemv")


@dataclass
class AWQConfig(QuantizationConfig):
    """The keys transformers' ``AwqConfig`` and AutoAWQ write, same names and defaults.

    ``version`` (AutoAWQ's name) and ``format`` (transformers 5 writes both) name the tensor
    layout: "gemm" (AutoAWQ's default, what vLLM serves) or "gemv". When both are given they
    must agree. AWQ stores asymmetric 4-bit codes with a zero point per group, so ``bits`` is 4
    and ``zero_point`` is true.
    """

    quant_method = "awq"
    requires_calibration = True
    # as AutoAWQ: block i + 1 is searched on block i's outputs before block i was scaled and quantized
    next_block_inputs = "float"
    # keys transformers' AwqConfig inherits from GPTQConfig, and keys of its fused/exllama
    # options: they do not change the tensors, so they are kept as they are and ignored
    known_foreign_keys = frozenset({
        "tokenizer", "dataset", "damp_percent", "desc_act", "act_group_aware", "sym", "true_sequential", "meta",
        "backend", "model_seqlen", "block_name_to_quantize", "module_name_preceding_first_block", "batch_size",
        "pad_token_id", "max_input_length", "cache_block_outputs", "modules_in_block_to_quantize", "do_fuse",
        "fuse_max_seq_len", "modules_to_fuse", "exllama_config", "use_exllama", "checkpoint_format", "pack_dtype",
        "use_cuda_fp16", "static_groups",
    })

    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    version: str = "gemm"
    format: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.bits != 4:
            raise ConfigError(f"AWQ stores 4-bit weights only (the GEMM/GEMV layouts pack 8 codes per int32), got bits={self.bits}")
        if self.group_size != -1 and (self.group_size <= 0 or self.group_size % 8):
            raise ConfigError(f"group_size must be a positive multiple of 8 (64, 128...) or -1 (one group per row), got {self.group_size}")
        if not self.zero_point:
            raise ConfigError("zero_point=false is not supported: the AWQ GEMM/GEMV layouts store a zero point per group "
                              "(qzeros); use zero_point=true")
        self.version = str(self.version).lower()
        if self.format is not None:
            self.format = str(self.format).lower()
        for key, value in (("version", self.version), ("format", self.format)):
            if value is not None and value not in LAYOUTS:
                raise ConfigError(f"{key}={value!r} is not a layout qcore reads or writes; use one of {LAYOUTS}")
        if self.format is not None and self.format != self.version:
            raise ConfigError(f"version={self.version!r} and format={self.format!r} disagree; both name the tensor layout, "
                              "give the same value (or only one of them)")

    @property
    def layout(self) -> str:
        """The tensor layout: "gemm" or "gemv"."""
        return self.format or self.version

    def group_size_for(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size
