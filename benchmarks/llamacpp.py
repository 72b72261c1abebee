"""llama.cpp rows for the benchmark: the same HF checkpoint converted by llama.cpp's own tools, measured the bench's way.

For a transformers llama checkpoint directory (SmolLM2-135M, the synthetic 1.1B llama of ``bench.py``):

1. ``convert_gguf``: llama.cpp's ``convert_hf_to_gguf.py`` writes a GGUF (F16 by default). It is not in the
   llama-cpp-python wheel: it comes from that package's sdist (``pip download --no-binary :all: --no-deps
   llama-cpp-python==0.3.36``), found through ``QCORE_LLAMACPP_CONVERT`` (the script, its folder, or the sdist
   ``.tar.gz``, unpacked once into the qcore cache) or an earlier unpack there. A checkpoint without a tokenizer
   (the synthetic 1.1B llama) gets a vocabulary-less GGUF (``tokenizer.ggml.model = none``): llama.cpp evaluates
   token ids without one.
2. ``quantize_gguf``: ``llama_cpp.llama_model_quantize`` to Q4_0 / Q8_0 (llama.cpp's defaults for the file
   type, e.g. its Q6_K output matrix for Q4_0 where the row length allows).
3. ``measure``: with ``n_threads = torch.get_num_threads()``, on the token ids of the HF tokenizer (no
   llama.cpp tokenization, so the numbers compare with the transformers rows):
   perplexity on the protocol of ``qcore.evaluate.perplexity`` (docs/evaluation.md: the first 2048 tokens of
   the text, windows of 512, no BOS, no context between windows); decode ms/token as ``decode_latency``
   (greedy, after the same prompt; without a tokenizer as ``bench._decode_without_tokenizer``: token 1
   repeated); prefill tokens/s as ``prefill_throughput`` (the same 256 random ids, logits for every position).

``llamacpp_row(checkpoint, "Q4_0", work)`` does all three and returns a dict shaped like ``bench.worker``'s
rows. Needs ``llama-cpp-python`` importable (it builds from the sdist with a C++ compiler and cmake) and
transformers; both missing pieces raise :class:`LlamaCppUnavailable` with what to install.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

LLAMACPP_VERSION = "0.3.36"
CONVERT_ENV = "QCORE_LLAMACPP_CONVERT"
QUANT_TYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7}  # llama_ftype: LLAMA_FTYPE_MOSTLY_*
PPL_TOKENS, PPL_WINDOW = 2048, 512  # the bench's perplexity protocol (bench.PPL_TOKENS, evaluate's window)
DECODE_PROMPT = "The licence gives you the freedom to"  # qcore.evaluate.decode_latency's default prompt
INSTALL_HINT = (f"pip install llama-cpp-python=={LLAMACPP_VERSION} (builds llama.cpp from the sdist: "
                "needs a C++ compiler and cmake, about 10 minutes on 2 cores)")
CONVERT_HINT = (f"download llama-cpp-python's sdist (pip download --no-binary :all: --no-deps "
                f"llama-cpp-python=={LLAMACPP_VERSION}) and set {CONVERT_ENV} to the .tar.gz, its unpacked folder, "
                "or vendor/llama.cpp/convert_hf_to_gguf.py inside it")


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python or llama.cpp's converter is not installed here."""


_QUIET: list[Any] = []  # the no-op log callback, kept alive while llama.cpp holds it


def llama_cpp_module() -> Any:
    """The ``llama_cpp`` module (llama-cpp-python), or :class:`LlamaCppUnavailable` saying how to install it.

    llama.cpp's own log (a line per tensor while quantizing, the loader's metadata dump) is silenced."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise LlamaCppUnavailable(f"llama.cpp rows need llama-cpp-python: {INSTALL_HINT} ({exc})") from None
    if not _QUIET:
        _QUIET.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
        llama_cpp.llama_log_set(_QUIET[0], None)
    return llama_cpp


def _cache_dir() -> Path:
    from qcore.testdata import cache_dir

    return cache_dir()


def _unpack_sdist(tarball: Path) -> Path:
    """Unpack llama-cpp-python's sdist once into the cache; returns its ``vendor/llama.cpp`` folder."""
    target = _cache_dir() / f"llamacpp-src-{tarball.name.removesuffix('.tar.gz')}"
    marker = target / ".unpacked"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and (m.isfile() or m.isdir())
                       and ("/gguf-py/" in m.name or "/conversion/" in m.name or m.name.endswith("convert_hf_to_gguf.py"))]
            tar.extractall(target, members=members, filter="data")
        marker.touch()
    found = sorted(target.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        raise LlamaCppUnavailable(f"{tarball} holds no vendor/llama.cpp/convert_hf_to_gguf.py; {CONVERT_HINT}")
    return found[0].parent


def converter(path: str | os.PathLike | None = None) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py``: from ``path``, ``$QCORE_LLAMACPP_CONVERT`` or an earlier unpack."""
    given = path or os.environ.get(CONVERT_ENV)
    if given:
        p = Path(given).expanduser()
        if p.is_file() and p.name.endswith(".tar.gz"):
            p = _unpack_sdist(p)
        candidates = [p, p / "convert_hf_to_gguf.py", p / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"]
        found = next((c for c in candidates if c.is_file() and c.name == "convert_hf_to_gguf.py"), None)
        if found is None:
            raise LlamaCppUnavailable(f"{CONVERT_ENV}={given} is not convert_hf_to_gguf.py, a folder holding it, or "
                                      f"llama-cpp-python's sdist; {CONVERT_HINT}")
        return found
    unpacked = sorted(_cache_dir().glob("llamacpp-src-*/*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if unpacked:
        return unpacked[-1]
    raise LlamaCppUnavailable(f"llama.cpp's convert_hf_to_gguf.py was not found; {CONVERT_HINT}")


# Run in a subprocess: puts the converter's own gguf-py first, gives a checkpoint without tokenizer files a
# vocabulary-less GGUF (llama.cpp's "none" tokenizer with the model's vocab size), then runs the script.
_DRIVER = r"""
import runpy, sys
from pathlib import Path
script, model_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path[:0] = [str(script.parent / "gguf-py"), str(script.parent)]
import conversion
if not any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
    model_class = conversion.get_model_class

    def set_vocab(self):  # llama's set_gguf_parameters writes the vocab size llama.cpp then uses
        self.gguf_writer.add_tokenizer_model("none")

    def get_model_class(name, mmproj=False):
        cls = model_class(name, mmproj)
        if not mmproj:
            cls.set_vocab = set_vocab  # this process converts one model
        return cls

    conversion.get_model_class = get_model_class
sys.argv = [str(script), *sys.argv[2:]]
runpy.run_path(str(script), run_name="__main__")
"""


def convert_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, outtype: str = "f16",
                 script: str | os.PathLike | None = None, timeout: int = 3600) -> Path:
    """Convert a transformers checkpoint directory to GGUF with llama.cpp's converter (``outtype`` f32/f16/bf16).

    Runs ``convert_hf_to_gguf.py`` in a subprocess of this Python (it needs torch, numpy, safetensors and,
    for the vocabulary, transformers). Returns ``out``; an existing ``out`` is reused.
    """
    out = Path(out)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    cmd = [sys.executable, "-c", _DRIVER, str(converter(script)), str(checkpoint), "--outfile", str(tmp),
           "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not tmp.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {checkpoint}: {tail}")
    os.replace(tmp, out)
    return out


def quantize_gguf(src: str | os.PathLike, out: str | os.PathLike, quant: str, threads: int | None = None) -> Path:
    """llama.cpp's own quantization (``llama_model_quantize``) of a GGUF to ``quant`` (Q4_0, Q8_0 or F16)."""
    if quant not in QUANT_TYPES:
        raise ValueError(f"quant must be one of {sorted(QUANT_TYPES)}, got {quant!r}")
    out = Path(out)
    if out.exists():
        return out
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = threads or os.cpu_count() or 1
    tmp = out.with_name(out.name + ".partial")
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if status != 0 or not tmp.exists():
        raise RuntimeError(f"llama_model_quantize({src} -> {quant}) failed with status {status}")
    os.replace(tmp, out)
    return out


def weight_bytes_per_token(gguf_path: str | os.PathLike) -> int:
    """Bytes of the tensors a decoded token reads in full: every tensor but the token embedding (one row of it
    is read), unless the embedding is also the output matrix (tied)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(gguf_path)).tensors}
    tied = "output.weight" not in tensors
    return sum(n for name, n in tensors.items() if tied or name != "token_embd.weight")


def load(gguf_path: str | os.PathLike, threads: int | None = None, n_ctx: int = PPL_WINDOW) -> Any:
    """A ``llama_cpp.Llama`` on the CPU keeping every position's logits (perplexity and the HF prefill need them)."""
    import torch

    llama_cpp = llama_cpp_module()
    threads = threads or torch.get_num_threads()
    return llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                           n_threads_batch=threads, n_gpu_layers=0, logits_all=True, verbose=False, seed=0)


def logits(llm: Any, ids: list[int]) -> Any:
    """float32 numpy ``(len(ids), vocab)``: the logits of every position for ``ids`` from an empty context."""
    llm.reset()
    llm.eval(list(ids))
    return llm.scores[: len(ids)].copy()


def perplexity(llm: Any, ids: list[int], max_tokens: int = PPL_TOKENS, window: int = PPL_WINDOW) -> float:
    """exp(mean NLL) over non-overlapping windows of the first ``max_tokens`` ids (docs/evaluation.md)."""
    import torch

    ids = list(ids)[:max_tokens]
    count = len(ids) // window
    if count == 0:
        raise ValueError(f"{len(ids)} tokens, fewer than one window of {window}")
    nll, predicted = 0.0, 0
    for w in range(count):
        chunk = ids[w * window:(w + 1) * window]
        scores = torch.from_numpy(logits(llm, chunk))[:-1].double()
        nll += float(torch.nn.functional.cross_entropy(scores, torch.tensor(chunk[1:]), reduction="sum"))
        predicted += window - 1
    return math.exp(nll / predicted)


def decode_ms_per_token(llm: Any, prompt: list[int], new_tokens: int, warmup: int, greedy: bool = True) -> float:
    """Mean ms per token of batch-1 decoding after ``prompt`` (KV cache kept), warm-up tokens excluded.

    ``greedy``: feed back the argmax (``qcore.evaluate.decode_latency``); else feed ``prompt[-1]`` again
    (``bench._decode_without_tokenizer``)."""
    llm.reset()
    llm.eval(list(prompt))

    def step() -> None:
        token = int(llm.scores[llm.n_tokens - 1].argmax()) if greedy else prompt[-1]
        llm.eval([token])

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(new_tokens):
        step()
    return 1000 * (time.perf_counter() - start) / new_tokens


def prefill_tokens_per_s(llm: Any, vocab_size: int, tokens: int = 256, repeats: int = 1) -> float:
    """Tokens per second of one forward over ``tokens`` random ids (``qcore.evaluate.prefill_throughput``'s
    ids: seed 0; best of ``repeats`` after a 16-token warm-up)."""
    import torch

    ids = torch.randint(0, vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))[0].tolist()
    logits(llm, ids[:16])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        logits(llm, ids)
        best = min(best, time.perf_counter() - start)
    return tokens / best


def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next((int(line.split()[1]) * 1024 for line in fh if line.startswith(field)), 0)


def _reset_peak() -> int:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _rss("VmRSS")


def gguf_files(checkpoint: str | os.PathLike, work: str | os.PathLike, quant: str,
               script: str | os.PathLike | None = None) -> tuple[Path, float]:
    """The F16 conversion and its ``quant`` version under ``work`` (made once); returns (path, seconds spent now)."""
    work = Path(work)
    start = time.perf_counter()
    f16 = convert_gguf(checkpoint, work / "model-F16.gguf", "f16", script)
    path = f16 if quant == "F16" else quantize_gguf(f16, work / f"model-{quant}.gguf", quant)
    return path, time.perf_counter() - start


def llamacpp_row(checkpoint: str | os.PathLike, quant: str, work: str | os.PathLike,
                 tokenizer: str | os.PathLike | None = None, *, text: str | None = None, decode_tokens: int = 16,
                 script: str | os.PathLike | None = None) -> dict[str, Any]:
    """One bench row for llama.cpp ``quant`` (Q4_0, Q8_0, F16) of ``checkpoint``, with the keys of bench.worker's rows.

    :param checkpoint: a transformers llama directory (config.json + safetensors).
    :param work: where the GGUF files go (reused when present: a checkpoint per ``work`` folder).
    :param tokenizer: the HF tokenizer's directory; None measures decode (8 tokens of id 1) and prefill only, as
        the bench does for the synthetic 1.1B llama.
    :param text: the perplexity text (default: ``qcore.testdata.reference_text()`` when there is a tokenizer).
    :returns: name, kind ("upstream"), size_bytes (the GGUF file), decode_bytes (weights read per token),
        quantize_s (conversion + quantization, 0 when cached), load_s, load_peak_rss, perplexity (with a
        tokenizer), decode_ms_per_token, prefill_tokens_per_s, threads.
    """
    import torch

    llama_cpp_module()
    path, quantize_s = gguf_files(checkpoint, work, quant, script)
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    threads = torch.get_num_threads()
    row: dict[str, Any] = {"name": f"llama.cpp {quant}", "kind": "upstream", "size_bytes": path.stat().st_size,
                           "decode_bytes": weight_bytes_per_token(path), "quantize_s": quantize_s, "threads": threads}
    baseline = _reset_peak()
    start = time.perf_counter()
    llm = load(path, threads)
    row["load_s"] = time.perf_counter() - start
    row["load_peak_rss"] = max(0, _rss("VmHWM") - baseline)
    if tokenizer is not None:
        from transformers import AutoTokenizer

        from qcore.testdata import reference_text

        tok = AutoTokenizer.from_pretrained(tokenizer)
        ids = tok(text if text is not None else reference_text(), add_special_tokens=False).input_ids
        row["perplexity"] = perplexity(llm, ids)
        row["decode_ms_per_token"] = decode_ms_per_token(llm, tok(DECODE_PROMPT).input_ids, decode_tokens, warmup=4)
    else:
        row["decode_ms_per_token"] = decode_ms_per_token(llm, [1], 8, warmup=1, greedy=False)
    row["prefill_tokens_per_s"] = prefill_tokens_per_s(llm, config["vocab_size"])
    if hasattr(llm, "close"):
        llm.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/llamacpp.py", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="transformers llama checkpoint directory")
    parser.add_argument("--quant", nargs="+", default=["Q4_0", "Q8_0"], choices=sorted(QUANT_TYPES))
    parser.add_argument("--work", help="where the GGUF files go (default: a folder in the qcore cache)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint if it has one)")
    parser.add_argument("--threads", type=int, help="torch/llama.cpp threads (default: torch's)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    src = Path(args.checkpoint)
    work = Path(args.work) if args.work else _cache_dir() / "llamacpp" / src.resolve().name
    tokenizer = args.tokenizer or (src if (src / "tokenizer.json").exists() or (src / "tokenizer.model").exists() else None)
    for quant in args.quant:
        try:
            print(json.dumps(llamacpp_row(src, quant, work, tokenizer)), flush=True)
        except (LlamaCppUnavailable, RuntimeError) as exc:
            print(json.dumps({"name": f"llama.cpp {quant}", "kind": "upstream", "error": str(exc)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
