"""The llama.cpp rows of the bench (benchmarks/llamacpp.py) measure the model transformers runs.

A tiny random llama (no tokenizer: the vocabulary-less GGUF path the synthetic 1.1B llama takes) goes
through llama.cpp's own converter; llama.cpp's logits on the same token ids must match transformers', and
the perplexity protocol must give qcore.evaluate's number. Needs llama-cpp-python and its sdist's converter.
"""

import math

import llamacpp  # benchmarks/llamacpp.py (pytest puts this folder on sys.path)
import pytest
import torch

from qcore.evaluate import perplexity as hf_perplexity
from qcore.testdata import tiny_llama


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36; "
                                            "it builds llama.cpp with cmake and a C++ compiler)")
    try:
        llamacpp.converter()
    except llamacpp.LlamaCppUnavailable as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("llamacpp")
    model = tiny_llama(seed=3)
    model.save_pretrained(root / "hf")
    gguf = llamacpp.convert_gguf(root / "hf", root / "tiny-F32.gguf", "f32")
    return model, root, gguf


def ids(count: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_llamacpp_logits_of_the_converted_model_match_transformers(converted):
    model, _, gguf = converted
    tokens = ids(48, 0)
    llm = llamacpp.load(gguf, threads=1, n_ctx=64)
    got = torch.from_numpy(llamacpp.logits(llm, tokens)).double()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].double()
    assert got.shape == want.shape == (48, 256)
    assert (got - want).abs().max() < 1e-3 * want.abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_llamacpp_perplexity_follows_the_evaluation_protocol(converted):
    model, _, gguf = converted
    tokens = ids(100, 1)  # 3 windows of 32, 4 tokens dropped

    class Tokenizer:  # qcore.evaluate.perplexity tokenizes the text: hand it the same ids
        def __call__(self, text, return_tensors=None, add_special_tokens=True):
            return type("Encoding", (), {"input_ids": torch.tensor([tokens])})

    want = hf_perplexity(model, Tokenizer(), "ignored", max_tokens=96, window=32)["perplexity"]
    got = llamacpp.perplexity(llamacpp.load(gguf, threads=1, n_ctx=64), tokens, max_tokens=96, window=32)
    assert math.isclose(got, want, rel_tol=1e-4)
    assert not math.isclose(got, llamacpp.perplexity(llamacpp.load(gguf, threads=1, n_ctx=64), tokens, 100, 50),
                            rel_tol=1e-3)  # the windowing matters: another protocol gives another number


@pytest.mark.parametrize(("quant", "tolerance"), [("Q8_0", 0.03), ("Q4_0", 0.3)])
def test_llamacpp_quantized_files_stay_close_and_shrink(converted, quant, tolerance):
    model, root, gguf = converted
    out = llamacpp.quantize_gguf(gguf, root / f"tiny-{quant}.gguf", quant, threads=1)
    assert out.stat().st_size < gguf.stat().st_size
    tokens = ids(32, 2)
    got = torch.from_numpy(llamacpp.logits(llamacpp.load(out, threads=1, n_ctx=64), tokens)).double()
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0].double()
    err = (got - want).norm() / want.norm()
    assert 0 < err < tolerance  # quantized indeed, and still the same model
    row = llamacpp.decode_ms_per_token(llamacpp.load(out, threads=1, n_ctx=64), [1], 4, warmup=1, greedy=False)
    assert row > 0


def test_a_missing_converter_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv(llamacpp.CONVERT_ENV, str(tmp_path))
    with pytest.raises(llamacpp.LlamaCppUnavailable, match="pip download --no-binary :all: --no-deps llama-cpp-python"):
        llamacpp.converter()
