"""GPTQConfig-compatible config (``quant_method: "gptq"``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qcore.config import QuantizationConfig
from qcore.errors import ConfigError

FORMATS = ("gptq", "gptq_v2")
CALIBRATION_DTYPES = ("auto", "float32", "bfloat16")
NOT_SAVED = ("calibration_dtype",)  # how the calibration ran, not what the tensors are


@dataclass
class GPTQConfig(QuantizationConfig):
    """The keys transformers/optimum/gptqmodel write for GPTQ, same names and defaults.

    ``checkpoint_format``: "gptq" (v1: zero points stored minus one, the format every
    loader reads) or "gptq_v2" (zero points stored as they are). ``act_group_aware``
    (default True, as gptqmodel): with ``desc_act=False``, columns are quantized in the
    group-aware order; it changes nothing in the saved layout.

    ``calibration_dtype`` (qcore's, not written to config.json: it does not change the format):
    the dtype of the block forwards during calibration, "auto" (bfloat16 where the hardware
    multiplies it natively, else float32), "float32" or "bfloat16"; the Hessians and the solver are
    float32 either way (see qcore.calibration).
    """

    quant_method = "gptq"
    requires_calibration = True
    # keys other GPTQ tools write into quantization_config that do not change the tensors
    known_foreign_keys = frozenset({
        "tokenizer", "dataset", "use_exllama", "exllama_config", "max_input_length", "cache_block_outputs",
        "model_seqlen", "block_name_to_quantize", "module_name_preceding_first_block", "batch_size",
        "pad_token_id", "use_cuda_fp16", "modules_in_block_to_quantize", "backend", "meta", "model_name_or_path",
        "model_file_base_name", "quantizer", "pack_dtype", "damp_auto_increment", "mse", "v2", "v2_alpha",
        "format", "lm_head", "is_marlin_format", "dynamic", "hyb_act", "quant_method_version",
        "mock_quantization", "fail_safe", "offload_to_disk", "offload_to_disk_path", "rotation", "adapter", "method",
    })

    bits: int = 4
    group_size: int = 128
    damp_percent: float = 0.01
    desc_act: bool = False
    # group-aware reordering (gptqmodel's default): act-order's benefit without g_idx indirection
    act_group_aware: bool = True
    sym: bool = True
    true_sequential: bool = True
    static_groups: bool = False
    checkpoint_format: str = "gptq"
    calibration_dtype: str = field(default="auto", compare=False)

    def validate(self) -> None:
        super().validate()
        if self.bits not in (2, 3, 4, 8):
            raise ConfigError(f"GPTQ bits must be 2, 3, 4 or 8, got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ConfigError(f"group_size must be positive or -1 (one group per row), got {self.group_size}")
        if not 0 < self.damp_percent < 1:
            raise ConfigError(f"damp_percent must be in (0, 1), got {self.damp_percent}")
        if self.calibration_dtype not in CALIBRATION_DTYPES:
            raise ConfigError(f"calibration_dtype must be one of {CALIBRATION_DTYPES}, got {self.calibration_dtype!r}")
        if self.checkpoint_format not in FORMATS:
            raise ConfigError(f"checkpoint_format must be one of {FORMATS}, got {self.checkpoint_format!r}")

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key in NOT_SAVED:
            out.pop(key, None)
        return out

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1
