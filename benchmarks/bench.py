"""Benchmarks (``tox -e bench``, ``python benchmarks/bench.py``): every installed preset against float and upstream libraries.

Every figure is measured in a fresh subprocess (so peak RSS is that job's alone: VmHWM is
reset after imports) and reported absolute and as a ratio to the float32 baseline of the
same run. Models: SmolLM2-135M (real weights) and a synthetic llama of ~1.1B parameters
(random weights, written shard by shard by the bench, cached) where memory bandwidth
dominates. Upstream libraries that fail here are reported with their error, not left out.
Writes ``docs/benchmarks/results.json``, ``docs/benchmarks.md`` and a PNG plot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from upstream import UPSTREAM_LOADERS  # benchmarks/upstream.py: one loader per upstream row

BIG_CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                  num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)
BIG_DIR = "synthetic-llama-1b"
PPL_TOKENS = 2048
UPSTREAM = ["gptqmodel-w4g128", "gptqmodel-w4g128-act", *UPSTREAM_LOADERS]
# gptqmodel lives in its own env (tox -e gptq-interop: 7.5.0 installed without its dependencies, so torch
# stays the CPU build); its rows run there, found here or through QCORE_GPTQMODEL_PYTHON.
GPTQMODEL_ENV_HINT = "build its env first: tox -e gptq-interop --notest (or set QCORE_GPTQMODEL_PYTHON)"
LLAMACPP_HINT = ("pip install llama-cpp-python==0.3.36 (builds llama.cpp, ~10 minutes on 2 cores) in this env "
                 "or set QCORE_LLAMACPP_PYTHON to a Python that has it")


# --- measurements inside a worker process ------------------------------------------------------
def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> int:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    return _rss("VmRSS")


def _peak_since(baseline: int) -> int:
    return max(0, _rss("VmHWM") - baseline)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*.safetensors"))


def _untied_embedding_bytes(model: Any) -> int:
    """Bytes of the input embedding when it is not also the output head (decoding reads one row of it)."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    embedding = get_in() if get_in else None
    head = get_out() if get_out else None
    weight = getattr(embedding, "weight", None)
    if weight is None:
        return 0
    head_weight = getattr(head, "weight", None)
    tied = head_weight is not None and head_weight.data_ptr() == weight.data_ptr()
    return 0 if tied else weight.numel() * weight.element_size()


def _quality_and_speed(model: Any, tokenizer: Any, text: str | None, speed: bool = True, size_bytes: int = 0) -> dict[str, Any]:
    from qcore.evaluate import decode_latency, perplexity, prefill_throughput

    out: dict[str, Any] = {}
    if not speed:  # a fake-quantized upstream row (float weights): only its quality means anything
        out["perplexity"] = perplexity(model, tokenizer, text, max_tokens=PPL_TOKENS)["perplexity"]
        return out
    # what one decoded token reads: the weights as stored (a kernel's resident layout has the same bytes),
    # less an untied input embedding
    out["decode_bytes"] = size_bytes - _untied_embedding_bytes(model)
    if text is not None and tokenizer is not None:
        out["perplexity"] = perplexity(model, tokenizer, text, max_tokens=PPL_TOKENS)["perplexity"]
        out["decode_ms_per_token"] = decode_latency(model, tokenizer, new_tokens=16)["ms_per_token"]
    else:
        out["decode_ms_per_token"] = _decode_without_tokenizer(model)
    out["prefill_tokens_per_s"] = prefill_throughput(model, tokens=256, repeats=1)["tokens_per_s"]
    return out


def _decode_without_tokenizer(model: Any, new_tokens: int = 8) -> float:
    import torch

    token = torch.tensor([[1]])
    with torch.no_grad():
        out = model(token, use_cache=True)
        past = out.past_key_values
        out = model(token, past_key_values=past, use_cache=True)  # warm-up
        past = out.past_key_values
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
    return 1000 * (time.perf_counter() - start) / new_tokens


KERNEL_LAYER = "model.layers.0.mlp.down_proj"
KERNEL_ROWS = (1, 64)


def _time_ms(fn: Any, rows: int) -> float:
    """Median milliseconds of ``fn()`` (warmed up; more repeats for the fast single-row case)."""
    import statistics

    for _ in range(3):
        fn()
    samples = []
    for _ in range(40 if rows == 1 else 10):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def kernel_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One layer's forward at 1 row (decoding) and 64 rows (prefill) through one kernel path."""
    if not job.get("native", True):
        os.environ["QCORE_NATIVE"] = "0"
    import torch

    import qcore

    result: dict[str, Any] = {"name": job["name"], "kind": "kernel"}
    if job["path"] == "float":
        from safetensors import safe_open

        with safe_open(str(Path(job["src"]) / "model.safetensors"), "pt") as f:
            weight = f.get_tensor(KERNEL_LAYER + ".weight").float()
        dtype = getattr(torch, job["dtype"])
        w = weight.to(dtype)
        layer = lambda x: torch.nn.functional.linear(x, w)  # noqa: E731
        in_features = weight.shape[1]
    elif job["path"] == "bitsandbytes":
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbF
        from safetensors import safe_open

        with safe_open(str(Path(job["src"]) / "model.safetensors"), "pt") as f:
            weight = f.get_tensor(KERNEL_LAYER + ".weight").float()
        packed, state = bnbF.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
        dtype = torch.float32
        layer = lambda x: bnb.matmul_4bit(x, packed.t(), quant_state=state)  # noqa: E731
        in_features = weight.shape[1]
    else:
        model = qcore.load_quantized(job["src"], progress=False)
        module = model.get_submodule(KERNEL_LAYER)
        result["module"] = repr(module)
        dtype = torch.float32
        layer, in_features = module, module.in_features
    with torch.no_grad():
        for rows in KERNEL_ROWS:
            x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(0)).to(dtype)
            result[f"ms_{rows}"] = _time_ms(lambda x=x: layer(x), rows)
    return result


# qcore rows and the upstream row doing the same thing, for the interleaved decode table
DECODE_PAIRS = {"hqq-4bit-g64": "hqq-lib-4bit-g64", "torchao-int8wo": "transformers-torchao-int8wo",
                "torchao-intx4-g32": "transformers-torchao-intx4-g32", "torchao-int8dq": "transformers-torchao-int8dq",
                "torchao-fp8wo": "transformers-torchao-fp8wo", "bnb-nf4": "transformers-bnb-nf4",
                "bnb-int8": "transformers-bnb-int8"}
DECODE_ROUNDS_EXTRA = ["gptq-w4g128", "awq-w4g64", "torchao-int4wo-g64", "fp8-block128"]


def _time_split(model: Any, ids: Any, steps: int = 16) -> dict[str, float]:
    """Milliseconds of one decode step spent in the quantized linear layers, in the output head, and elsewhere
    (norms, attention, rotary, the cache, transformers' Python), timed by wrapping those modules' forwards
    (which adds a little time of its own to the first two)."""
    from qcore.evaluate import decode_ms

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    spent = {"linear layers": 0.0, "output head": 0.0}
    wrapped = []
    for module in model.modules():
        linear = hasattr(module, "in_features") and hasattr(module, "out_features") and not list(module.children())
        if module is head or linear:
            key = "output head" if module is head else "linear layers"

            def timed(*a: Any, _f: Any = module.forward, _k: str = key, **kw: Any) -> Any:
                start = time.perf_counter()
                out = _f(*a, **kw)
                spent[_k] += time.perf_counter() - start
                return out

            module.forward = timed
            wrapped.append(module)
    try:
        total = decode_ms(model, ids, steps, warmup=4, on_start=lambda: spent.update(dict.fromkeys(spent, 0.0)))
    finally:
        for module in wrapped:
            del module.forward
    split = {k: 1000 * v / steps for k, v in spent.items()}
    split["elsewhere"] = total - sum(split.values())
    return split


def decode_rounds_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Decode latency of several models held in one process, measured in interleaved rounds (the machine's
    noise then falls on all of them alike), and where each one's time goes."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import qcore
    from qcore.evaluate import decode_ms

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if job.get("tokenizer"):
        ids = AutoTokenizer.from_pretrained(job["tokenizer"])("The licence gives you the freedom to", return_tensors="pt").input_ids
    else:
        ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    models: dict[str, Any] = {}
    for name, how in job["models"]:
        if how in ("float32", "bfloat16"):
            models[name] = AutoModelForCausalLM.from_pretrained(job["src"], dtype=getattr(torch, how)).eval()
        elif how == "upstream":
            models[name] = UPSTREAM_LOADERS[name](Path(job["src"]))
        else:
            models[name] = qcore.load_quantized(how, progress=False)
    ms: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            decode_ms(model, ids, 4)  # warm
        for _ in range(job["rounds"]):
            for name, model in models.items():
                ms[name].append(decode_ms(model, ids, 16))
        split = {name: _time_split(model, ids) for name, model in models.items()}
    return {"name": job["name"], "kind": "rounds", "rounds": job["rounds"], "threads": torch.get_num_threads(),
            "ms": {name: statistics.median(v) for name, v in ms.items()}, "ms_all": ms, "split": split}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement (called in a fresh process)."""
    if job["kind"] == "kernel":
        return kernel_worker(job)
    if job["kind"] == "rounds":
        return decode_rounds_worker(job)
    import torch

    import qcore
    from qcore.testdata import calibration_text, reference_text

    src, kind, name = Path(job["src"]), job["kind"], job["name"]
    tokenizer = None
    if job.get("tokenizer"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
    text = reference_text() if tokenizer is not None else None
    result: dict[str, Any] = {"name": name, "kind": kind}
    baseline = _reset_peak()
    start = time.perf_counter()
    if kind == "float":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, job["dtype"])).eval()
        result["load_s"] = time.perf_counter() - start
        result["load_peak_rss"] = _peak_since(baseline)
        result["size_bytes"] = _size(src) * (2 if job["dtype"] == "bfloat16" else 4) // 4
    elif kind == "qcore":
        preset = job.get("preset", name)
        config = qcore.plugins.config_from_dict({**qcore.registry().presets[preset], **job.get("overrides", {})}, strict=True)
        if job.get("reuse_saved"):  # another kernel path for the checkpoint the preset's own row saved
            model = None
        elif type(config).requires_calibration and tokenizer is not None and not job.get("rtn"):
            model = qcore.load_quantized(src, progress=False)
            qcore.quantize(model, config, calibration=calibration_text(), tokenizer=tokenizer, nsamples=16, seqlen=512,
                           progress=False)
            result["calibrated"] = True
        else:  # includes GPTQ on the random-weight model: no text, so round-to-nearest while loading
            if type(config).requires_calibration and not job.get("rtn"):
                result["name"] = name.replace(preset, f"{preset} (RTN, no data)")
            model = qcore.load_quantized(src, config, progress=False)
        out = Path(job["out"])
        if model is not None:
            result["quantize_s"] = time.perf_counter() - start
            result["quantize_peak_rss"] = _peak_since(baseline)
            if result.get("calibrated"):  # seconds per phase, as the core's calibration driver recorded them
                from qcore.calibration import last_profile

                result["calibration_profile"] = last_profile()
            qcore.save_quantized(model, out, overwrite=True)
            del model
        result["size_bytes"] = _size(out)
        baseline = _reset_peak()
        start = time.perf_counter()
        model = qcore.load_quantized(out, progress=False)
        result["load_s"] = time.perf_counter() - start
        result["load_peak_rss"] = _peak_since(baseline)
    elif kind == "llamacpp":
        import llamacpp  # benchmarks/llamacpp.py

        result.update(llamacpp.llamacpp_row(src, job["quant"], Path(job["out"]), tokenizer=job.get("tokenizer"), text=text),
                      name=name)
        return result
    else:
        model = _upstream(job, tokenizer, result, baseline, start)
    from upstream import FAKE_QUANT

    result.update(_quality_and_speed(model, tokenizer, text, speed=name not in FAKE_QUANT, size_bytes=result.get("size_bytes", 0)))
    return result




def _upstream(job: dict[str, Any], tokenizer: Any, result: dict[str, Any], baseline: int, start: float) -> Any:
    from upstream import UPSTREAM_LOADERS

    if job["name"].startswith("gptqmodel"):
        return _gptqmodel(job, tokenizer, result, baseline, start)
    from upstream import FAKE_QUANT

    model = UPSTREAM_LOADERS[job["name"]](Path(job["src"]))
    result["quantize_s"] = time.perf_counter() - start
    if job["name"] in FAKE_QUANT:  # float weights holding quantized values: neither size nor load means anything
        return model
    result["load_s"] = result["quantize_s"]
    result["load_peak_rss"] = result["quantize_peak_rss"] = _peak_since(baseline)
    result["size_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return model


def _gptqmodel(job: dict[str, Any], tokenizer: Any, result: dict[str, Any], baseline: int, start: float) -> Any:
    """gptqmodel's GPTQ (4-bit, group 128, sym) on the same calibration windows as qcore's, then
    its checkpoint loaded through transformers (gptqmodel's torch kernel: its default CPU kernel
    refuses 576 inputs with group 128)."""
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoModelForCausalLM, GPTQConfig

    from qcore.calibration import calibration_windows
    from qcore.testdata import calibration_text

    desc_act = job["name"].endswith("-act")  # else gptqmodel's default: group-aware reordering (GAR)
    windows = calibration_windows(calibration_text(), tokenizer, nsamples=16, seqlen=512)
    data = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    model = GPTQModel.load(job["src"], QuantizeConfig(bits=4, group_size=128, desc_act=desc_act, sym=True), device="cpu")
    model.quantize(data, batch_size=4)
    out = Path(job["out"])
    model.save(str(out))
    result["quantize_s"] = time.perf_counter() - start
    result["quantize_peak_rss"] = _peak_since(baseline)
    result["size_bytes"] = _size(out)
    del model
    baseline = _reset_peak()
    start = time.perf_counter()
    cfg = GPTQConfig(bits=4, group_size=128, desc_act=desc_act, sym=True, backend="torch")
    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32, quantization_config=cfg).eval()
    result["load_s"] = time.perf_counter() - start
    result["load_peak_rss"] = _peak_since(baseline)
    return model


def gptqmodel_python() -> str | None:
    """The Python of an env where gptqmodel imports: QCORE_GPTQMODEL_PYTHON, else tox's gptq-interop env."""
    explicit = os.environ.get("QCORE_GPTQMODEL_PYTHON")
    candidate = Path(explicit) if explicit else Path(__file__).resolve().parents[1] / ".tox" / "gptq-interop" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


# --- orchestration -------------------------------------------------------------------------------
def llamacpp_python() -> str | None:
    """The Python of an env where llama_cpp imports: QCORE_LLAMACPP_PYTHON, else this one if it has llama_cpp."""
    explicit = os.environ.get("QCORE_LLAMACPP_PYTHON")
    if explicit:
        return explicit if Path(explicit).exists() else None
    import importlib.util

    return sys.executable if importlib.util.find_spec("llama_cpp") else None


def run_job(job: dict[str, Any], timeout: int) -> dict[str, Any]:
    python, env = sys.executable, {**os.environ, **job.get("env", {})}
    if job["name"].startswith("gptqmodel"):
        python = gptqmodel_python()
        if python is None:
            return {"name": job["name"], "kind": job["kind"], "error": f"gptqmodel is not installed here: {GPTQMODEL_ENV_HINT}"}
        env.update(GPTQMODEL_CPU_WORKERS="2", CUDA_VISIBLE_DEVICES="")
    elif job["kind"] == "llamacpp":
        python = llamacpp_python()
        if python is None:
            return {"name": job["name"], "kind": job["kind"], "error": f"llama-cpp-python is not installed: {LLAMACPP_HINT}"}
    cmd = [python, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"name": job["name"], "kind": job["kind"], "error": f"timed out after {timeout}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": job["name"], "kind": job["kind"], "error": tail[:300]}
    return json.loads(lines[-1])


def synthetic_llama(directory: Path) -> Path:
    """A ~1.1B-parameter llama with random weights, written one layer per shard (never all in memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    target = directory / BIG_DIR
    if (target / "model.safetensors.index.json").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**BIG_CONFIG)
    cfg.architectures = ["LlamaForCausalLM"]
    h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    weight_map: dict[str, str] = {}
    shards = [("model.embed_tokens.weight", (cfg.vocab_size, h))]
    for n in range(cfg.num_hidden_layers):
        name = f"model-{n + 1:05d}.safetensors"
        p = f"model.layers.{n}."
        tensors = {p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
                   p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
                   p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
                   p + "mlp.down_proj.weight": rand(h, i), p + "input_layernorm.weight": torch.ones(h),
                   p + "post_attention_layernorm.weight": torch.ones(h)}
        save_file(tensors, str(target / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    last = "model-embed-head.safetensors"
    save_file({shards[0][0]: rand(*shards[0][1]), "lm_head.weight": rand(cfg.vocab_size, h), "model.norm.weight": torch.ones(h)},
              str(target / last), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys([shards[0][0], "lm_head.weight", "model.norm.weight"], last))
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg.save_pretrained(target)
    return target


def copy_bandwidth_gb_per_s() -> float:
    """This machine's memory bandwidth as torch sees it: bytes read + written per second copying 256 MiB
    (best of 5, torch's thread count)."""
    import torch

    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem / 2**30, 1), "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(),
            "copy_gb_per_s": round(copy_bandwidth_gb_per_s(), 1)}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["name"] == "float32" and "error" not in r), None)
    if base is None:
        return
    ratios = {"size_ratio": ("size_bytes", False), "decode_speedup": ("decode_ms_per_token", True),
              "prefill_ratio": ("prefill_tokens_per_s", False), "load_rss_ratio": ("load_peak_rss", False),
              "ppl_ratio": ("perplexity", False)}
    for r in rows:
        if "error" in r:
            continue
        for ratio, (key, inverse) in ratios.items():
            if key in r and base.get(key):
                r[ratio] = base[key] / r[key] if inverse else r[key] / base[key]
        if r.get("decode_bytes") and r.get("decode_ms_per_token"):
            r["decode_gb_per_s"] = r["decode_bytes"] / r["decode_ms_per_token"] / 1e6


def _header(m: dict[str, Any]) -> list[str]:
    return ["# Benchmarks", "",
            f"Generated by `tox -e bench` (`python benchmarks/bench.py`) on {m['date']}: {m['cpu']}, {m['cores']} cores "
            f"({m.get('threads', m['cores'])} torch threads), {m['memory_gb']} GB RAM, torch {m['torch']}, Python {m['python']}, "
            f"no GPU; copy bandwidth {m.get('copy_gb_per_s', '–')} GB/s (read + write, torch `copy_` of 256 MiB). "
            "Every ratio is against the float32 row of the same table. Each row is measured in a fresh process; "
            "`--only ROW...` re-measures some rows and keeps the rest, so rows of one table may come from different runs "
            "on this shared, noisy machine (compare the ratios, and see docs/kernels.md for interleaved measurements). "
            "Peak RSS is VmHWM after imports; transformers memory-maps a float32 checkpoint, so its pages count only once "
            "touched.", "",
            "Perplexity: GPL-3 text, first 2048 tokens, windows of 512 ([protocol](evaluation.md)); calibration (GPTQ, "
            "AWQ, and AutoAWQ/gptqmodel on the same windows): 16×512 tokens of other licence texts. Size: safetensors "
            "bytes on disk for qcore and float rows (qcore keeps the tensors it does not quantize, SmolLM2's tied "
            "embedding and the norms, in the checkpoint's float32), GGUF bytes for llama.cpp, the bytes of the "
            "quantized state dict in memory for other upstream rows. *decode GB/s*: the bytes one decoded token reads "
            "(every weight once; an untied input embedding only one row) over the decode time, to compare with the copy "
            "bandwidth above. `+int8-act`: the same checkpoint with `QCORE_INT8_ACTIVATIONS=1` (activations quantized to "
            "int8 per 64 values and integer dot products, as llama.cpp does; docs/kernels.md).", "",
            "Upstream rows: transformers + bitsandbytes 0.50.2 (nf4 with double quant and float32 compute; LLM.int8); "
            "gptqmodel (4-bit, group 128, sym, same calibration windows) in its own env (`tox -e gptq-interop`), loaded "
            "through transformers with its torch kernel; AutoAWQ 0.2.9 (4-bit g64, same windows; its search and "
            "quantizer, kept as float weights, so only perplexity and time are shown); hqq 0.2.8 HQQLinear 4-bit g64 on "
            "the float32 model (transformers refuses HQQ); transformers + torchao 0.18 (`TorchAoConfig` while loading); "
            "optimum-quanto int8; llama.cpp through llama-cpp-python (GGUF converted from the same safetensors with its "
            "convert_hf_to_gguf.py, then quantized by llama.cpp; its own tokenizer path is not used: the same token ids "
            "are fed). On the random-weight 1.1B model there is no text: calibration methods run as round-to-nearest "
            "while loading and no perplexity is measured.", ""]


def _cell(row: dict[str, Any], key: str, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    return fmt.format(row[key] / scale) if row.get(key) is not None else "–"


def markdown(results: dict[str, Any]) -> str:
    lines = _header(results["machine"])
    for model_name, rows in results["models"].items():
        lines += [f"## {model_name}", "",
                  "| method | kind | size MB | size × | ppl | ppl × | decode ms/tok | decode × | decode GB/s | prefill tok/s | "
                  "prefill × | quantize s | quantize peak MB | load s | load peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['name']} | {r['kind']} | failed: {r['error'].replace('|', '/')} |||||||||||||")
                continue
            cells = [_cell(r, "size_bytes", "{:.0f}", 1e6), _cell(r, "size_ratio"), _cell(r, "perplexity"),
                     _cell(r, "ppl_ratio", "{:.3f}"), _cell(r, "decode_ms_per_token", "{:.1f}"), _cell(r, "decode_speedup"),
                     _cell(r, "decode_gb_per_s", "{:.1f}"), _cell(r, "prefill_tokens_per_s", "{:.0f}"),
                     _cell(r, "prefill_ratio"), _cell(r, "quantize_s", "{:.1f}"), _cell(r, "quantize_peak_rss", "{:.0f}", 2**20),
                     _cell(r, "load_s"), _cell(r, "load_peak_rss", "{:.0f}", 2**20)]
            lines.append(f"| {r['name']} | {r['kind']} | " + " | ".join(cells) + " |")
        lines.append("")
        profiled = [r for r in rows if r.get("calibration_profile")]
        if profiled:
            phases = sorted({p for r in profiled for p in r["calibration_profile"]})
            lines += [f"Calibration time by phase ({model_name}, seconds, as recorded by `qcore.calibration.last_profile()`):", "",
                      "| method | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
            for r in profiled:
                lines.append(f"| {r['name']} | " + " | ".join(_cell(r["calibration_profile"], p, "{:.1f}") for p in phases) + " |")
            lines.append("")
    rounds = results.get("decode_rounds")
    if rounds and "error" not in rounds:
        ms, split = rounds["ms"], rounds["split"]
        base = ms.get("float32")
        lines += ["## SmolLM2-135M decode in interleaved rounds", "",
                  f"All these models held in one process and decoded in turn, {rounds['rounds']} rounds of 16 tokens each "
                  f"on {rounds.get('threads', '?')} torch thread(s) "
                  "(batch 1, KV cache, greedy, after the same prompt), so the machine's noise falls on every model alike: "
                  "the median ms per token, its speed-up over float32 and over the upstream library doing the same thing "
                  "(*× upstream*: upstream time / qcore time), and where one decode step's time goes (the quantized linear "
                  "layers, the output head, and everything else: norms, attention, rotary, the KV cache and transformers' "
                  "own Python, which no weight format changes).", "",
                  "| model | ms/token | fastest round | × float32 | × upstream | linear layers ms | output head ms | elsewhere ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, value in ms.items():
            pair = DECODE_PAIRS.get(name)
            vs_up = f"{ms[pair] / value:.2f} ({pair})" if pair in ms else "–"
            sp = split.get(name, {})
            fastest = f"{min(rounds['ms_all'][name]):.1f}" if name in rounds.get("ms_all", {}) else "–"
            lines.append(f"| {name} | {value:.1f} | {fastest} | {base / value:.2f} | {vs_up} | " + " | ".join(
                f"{sp[k]:.1f}" if k in sp else "–" for k in ("linear layers", "output head", "elsewhere")) + " |")
        lines.append("")
    elif rounds:
        lines += ["## SmolLM2-135M decode in interleaved rounds", "", f"failed: {rounds['error']}", ""]
    if results.get("kernels"):
        lines += [f"## Kernels: one layer ({KERNEL_LAYER} of SmolLM2-135M, 576 × 1536)", "",
                  "Forward of one quantized layer at 1 row (decoding) and 64 rows (prefill), median of repeats, each path in "
                  "its own process. *native*: the plugins' C kernels (built at install, SIMD variant chosen at run time); *plain torch*: the "
                  "same plugin with `QCORE_NATIVE=0` (what a machine without a C compiler runs). The Triton GPU kernels "
                  "are not measured here: no GPU on this machine.", "",
                  "| path | 1 row ms | × float32 | 64 rows ms | × float32 |", "|---|---|---|---|---|"]
        base = next((k for k in results["kernels"] if k["name"] == "float32 F.linear" and "error" not in k), None)
        for k in results["kernels"]:
            if "error" in k:
                lines.append(f"| {k['name']} | failed: {k['error'].replace('|', '/')} ||||")
                continue
            ratio = {r: (f"{base[f'ms_{r}'] / k[f'ms_{r}']:.2f}" if base else "–") for r in KERNEL_ROWS}
            lines.append(f"| {k['name']} | {k['ms_1']:.3f} | {ratio[1]} | {k['ms_64']:.3f} | {ratio[64]} |")
        lines += ["", "× float32 above 1 means faster than the float32 layer.", ""]
    if results.get("memory_checks"):
        lines += ["## Load-memory checks", ""]
        lines += [f"- {c}" for c in results["memory_checks"]]
        lines.append("")
    lines += ["![size vs perplexity and speed](benchmarks/size_vs_ppl.png)", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in results["models"].get("SmolLM2-135M", [])
            if "error" not in r and "perplexity" in r and "size_bytes" in r and "decode_ms_per_token" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        color = "tab:blue" if r["kind"] == "qcore" else "tab:gray" if r["kind"] == "float" else "tab:orange"
        axes[0].scatter(r["size_bytes"] / 1e6, r["perplexity"], color=color)
        axes[0].annotate(r["name"], (r["size_bytes"] / 1e6, r["perplexity"]), fontsize=7)
        axes[1].scatter(r["size_bytes"] / 1e6, r["decode_ms_per_token"], color=color)
        axes[1].annotate(r["name"], (r["size_bytes"] / 1e6, r["decode_ms_per_token"]), fontsize=7)
    axes[0].set(xlabel="size on disk (MB)", ylabel="perplexity (GPL-3)", title="SmolLM2-135M: size vs perplexity")
    axes[1].set(xlabel="size on disk (MB)", ylabel="decode ms/token (batch 1, log scale)", title="size vs decode latency",
                yscale="log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def memory_checks(rows: list[dict[str, Any]], float_bytes: int, largest_tensor: int, model: str) -> list[str]:
    notes = []
    slack = 64 * 2**20
    for r in rows:
        if r.get("kind") != "qcore" or "error" in r:
            continue
        for key, what in (("load_peak_rss", "loading the saved checkpoint"), ("quantize_peak_rss", "on-the-fly quantization")):
            if key not in r:
                continue
            bound = r["size_bytes"] + 4 * largest_tensor + slack
            if key == "quantize_peak_rss" and r.get("calibrated"):  # calibration holds the float model by design
                what, bound = "calibration (holds the float model, so the bound adds it)", bound + float_bytes
            verdict = "OK" if r[key] <= bound else "OVER"
            notes.append(f"{model} {r['name']}: {what} peaked at {r[key] / 2**20:.0f} MB (float model {float_bytes / 2**20:.0f} MB, "
                         f"quantized {r['size_bytes'] / 2**20:.0f} MB, bound quantized + 4 × largest tensor + 64 MB"
                         f"{' + float model' if 'calibration' in what else ''} = "
                         f"{bound / 2**20:.0f} MB): {verdict}")
    return notes


# SmolLM2 rows that answer a question about a preset: what GPTQ's options are worth against round-to-nearest
VARIANTS = {"gptq-w4g128 no-GAR": {"preset": "gptq-w4g128", "overrides": {"act_group_aware": False}},
            "gptq-w4g128 RTN": {"preset": "gptq-w4g128", "rtn": True},
            "gptq-w4g128 damp0.05": {"preset": "gptq-w4g128", "overrides": {"damp_percent": 0.05}},  # gptqmodel's default
            "gptq-w4g128 fp32-forwards": {"preset": "gptq-w4g128", "overrides": {"calibration_dtype": "float32"}},
            "awq-w4g64 RTN": {"preset": "awq-w4g64", "rtn": True}}
# 1.1B rows: llama.cpp's Q4_0 quantizes the output head too (to Q6_K); this row does the same with NF4
BIG_VARIANTS = {"bnb-nf4 +lm_head +int8-act": {"preset": "bnb-nf4", "overrides": {"modules_to_not_convert": []},
                                               "env": {"QCORE_INT8_ACTIVATIONS": "1"}}}
INT8_ACT = " +int8-act"  # a row suffix: the same preset with QCORE_INT8_ACTIVATIONS=1 (docs/kernels.md)
LLAMACPP_QUANTS = ("Q4_0", "Q8_0")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="*", help="qcore presets (default: every installed one)")
    parser.add_argument("--upstream", nargs="*", default=UPSTREAM, help=f"upstream rows (default: {' '.join(UPSTREAM)})")
    parser.add_argument("--int8-act", nargs="*", default=["bnb-nf4", "gptq-w4g128"],
                        help=f"presets also measured with int8 activations (rows '<preset>{INT8_ACT}')")
    parser.add_argument("--llamacpp", nargs="*", default=list(LLAMACPP_QUANTS),
                        help="llama.cpp GGUF types measured on both models (rows 'llama.cpp-<type>'), where installed")
    parser.add_argument("--skip-big", action="store_true", help="skip the synthetic ~1.1B model")
    parser.add_argument("--skip-small", action="store_true", help="skip SmolLM2-135M and the one-layer kernel table")
    parser.add_argument("--big-presets", nargs="*",
                        default=["bnb-nf4", "bnb-int8", "gptq-w4g128", "gptq-w8", "fp8-block128", "hqq-4bit-g64",
                                 "torchao-int8wo", "torchao-intx4-g32"],
                        help="presets run on the ~1.1B model (no calibration there: GPTQ and AWQ run as RTN)")
    parser.add_argument("--big-upstream", nargs="*", default=["transformers-bnb-nf4"], help="upstream rows on the ~1.1B model")
    parser.add_argument("--only", nargs="*",
                        help="measure only these rows (names as in the tables) and merge them into the existing "
                             "results.json; every other row is kept as it was")
    parser.add_argument("--rounds", type=int, default=5,
                        help=f"interleaved decode rounds on SmolLM2 (the '{ROUNDS_JOB}' table; 0 skips it)")
    parser.add_argument("--rounds-threads", type=int, help="torch threads for the interleaved rounds (default: torch's)")
    parser.add_argument("--out", default="docs", help="where benchmarks.md and benchmarks/ go (default: docs)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def kernel_jobs(float_dir: Path, saved: Path, presets: list[str], int8_act: list[str]) -> list[dict[str, Any]]:
    """Per-layer kernel timings: float baselines, each saved qcore preset native and plain torch, bitsandbytes."""
    jobs = [{"name": "float32 F.linear", "path": "float", "dtype": "float32", "src": str(float_dir)},
            {"name": "bfloat16 F.linear", "path": "float", "dtype": "bfloat16", "src": str(float_dir)}]
    for preset in presets:
        for native in (True, False):
            jobs.append({"name": f"{preset} ({'native' if native else 'plain torch'})", "path": "qcore", "native": native,
                         "src": str(saved / preset)})
    for preset in int8_act:
        if preset in presets:
            jobs.append({"name": f"{preset} (native{INT8_ACT})", "path": "qcore", "src": str(saved / preset),
                         "env": {"QCORE_INT8_ACTIVATIONS": "1"}})
    jobs.append({"name": "bitsandbytes nf4 (its CPU kernel)", "path": "bitsandbytes", "src": str(float_dir)})
    for job in jobs:
        job["kind"] = "kernel"
    return jobs


def model_jobs(model_name: str, src: Path, tokenizer: Path | None, work: Path, presets: list[str], int8_act: list[str],
               upstream: list[str], llamacpp: list[str]) -> list[dict[str, Any]]:
    jobs = [{"name": "float32", "kind": "float", "dtype": "float32"}, {"name": "bfloat16", "kind": "float", "dtype": "bfloat16"}]
    jobs += [{"name": p, "kind": "qcore", "out": str(work / model_name / p)} for p in presets]
    jobs += [{"name": p + INT8_ACT, "preset": p, "kind": "qcore", "out": str(work / model_name / p), "reuse_saved": True,
              "env": {"QCORE_INT8_ACTIVATIONS": "1"}} for p in int8_act if p in presets]
    variants = VARIANTS if tokenizer is not None else BIG_VARIANTS
    jobs += [{"name": v, "kind": "qcore", "out": str(work / model_name / v), **spec}
             for v, spec in variants.items() if spec["preset"] in presets]
    jobs += [{"name": u, "kind": "upstream", "out": str(work / model_name / u)} for u in upstream]
    jobs += [{"name": f"llama.cpp-{q}", "kind": "llamacpp", "quant": q, "out": str(work / model_name / "gguf")} for q in llamacpp]
    for job in jobs:
        job.update(src=str(src), tokenizer=str(tokenizer) if tokenizer else None)
    return jobs


ROUNDS_JOB = "decode rounds"


def rounds_job(src: Path, saved_dir: Path, saved: list[str], upstream: list[str], rounds: int,
               threads: int | None = None) -> dict[str, Any]:
    """The interleaved decode measurement: float32, bfloat16, the qcore presets that have an upstream
    counterpart (and that counterpart) or are in DECODE_ROUNDS_EXTRA, each as saved by its own row."""
    models: list[tuple[str, str]] = [("float32", "float32"), ("bfloat16", "bfloat16")]
    for preset in [*DECODE_PAIRS, *DECODE_ROUNDS_EXTRA]:
        if preset in saved:
            models.append((preset, str(saved_dir / preset)))
            if DECODE_PAIRS.get(preset) in upstream:
                models.append((DECODE_PAIRS[preset], "upstream"))
    return {"name": ROUNDS_JOB, "kind": "rounds", "src": str(src), "tokenizer": str(src), "models": models, "rounds": rounds,
            "threads": threads}


def _merge(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Replace the row measured by the same job, or append."""
    for i, old in enumerate(rows):
        if old.get("job", old["name"]) == row["job"]:
            rows[i] = row
            return
    rows.append(row)


def run_bench(args: argparse.Namespace) -> int:
    import qcore
    from qcore.testdata import cache_dir, smollm2_checkpoint

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    out = Path(args.out)
    results_path = out / "benchmarks" / "results.json"
    work = cache_dir() / "bench"
    small = smollm2_checkpoint()
    installed = qcore.registry().presets
    presets = args.presets if args.presets is not None else sorted(p for p in installed if not p.startswith("example"))
    only = set(args.only) if args.only is not None else None
    results: dict[str, Any] = {"models": {}, "memory_checks": []}
    if only is not None and results_path.exists():
        results = json.loads(results_path.read_text())
    results["machine"] = machine()

    def write() -> None:
        results["memory_checks"] = []
        for model_name, rows in results["models"].items():
            add_ratios(rows)
            sizes = {"SmolLM2-135M": (_size(small), 49152 * 576 * 4)}
            if model_name in sizes:
                results["memory_checks"] += memory_checks(rows, *sizes[model_name], model_name)
            elif "1.1B" in model_name and (work / BIG_DIR).exists():
                results["memory_checks"] += memory_checks(rows, _size(work / BIG_DIR), 32000 * 2048 * 4, "llama-1.1B")
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        plot(results, out / "benchmarks" / "size_vs_ppl.png")
        (out / "benchmarks.md").write_text(markdown(results))

    def run(section: list[dict[str, Any]], jobs: list[dict[str, Any]], label: str) -> None:
        for job in jobs:
            if only is not None and job["name"] not in only:
                continue
            print(f"[{label}] {job['name']} ...", flush=True)
            row = run_job(job, args.timeout)
            row["job"] = job["name"]
            _merge(section, row)
            print(f"    {json.dumps({k: v for k, v in row.items() if k not in ('kind', 'module')})}", flush=True)
            write()

    if not args.skip_small:
        small_rows = results["models"].setdefault("SmolLM2-135M", [])
        run(small_rows, model_jobs("SmolLM2-135M", small, small, work, presets, args.int8_act, args.upstream, args.llamacpp),
            "SmolLM2-135M")
        saved = [r.get("job", r["name"]) for r in small_rows if "error" not in r and r.get("job", r["name"]) in presets]
        run(results.setdefault("kernels", []), kernel_jobs(small, work / "SmolLM2-135M", saved, args.int8_act), "kernels")
        if args.rounds and (only is None or ROUNDS_JOB in only):
            print(f"[SmolLM2-135M] {ROUNDS_JOB} ...", flush=True)
            results["decode_rounds"] = run_job(rounds_job(small, work / "SmolLM2-135M", saved, args.upstream, args.rounds,
                                                          args.rounds_threads), args.timeout)
            write()
    if not args.skip_big:
        big = synthetic_llama(work)
        name = "synthetic llama 1.1B (random weights)"
        big_presets = [p for p in args.big_presets if p in installed]
        run(results["models"].setdefault(name, []),
            model_jobs(name, big, None, work, big_presets, args.int8_act, args.big_upstream, args.llamacpp), name)
    write()
    print(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks'}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
