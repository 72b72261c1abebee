"""`qcore quantize --method awq` end to end on a tiny model, and the errors that must come before any work."""

import json

import pytest
import torch

import qcore
from qcore.cli import main
from qcore.errors import CalibrationError, ConfigError


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    """A tiny llama with a small byte-level BPE tokenizer trained here (so the CLI can tokenize text)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from qcore.testdata import reference_text, tiny_llama

    path = tmp_path_factory.mktemp("awq-cli") / "float"
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([reference_text()[:8000]], vocab_size=300, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    tiny_llama(vocab_size=300).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    from qcore.testdata import reference_text

    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(reference_text()[8000:20000], encoding="utf-8")
    return path


def test_cli_quantizes_and_the_checkpoint_loads(float_dir, calibration_file, tmp_path, capsys):
    dst = tmp_path / "awq"
    code = main(["quantize", str(float_dir), str(dst), "--method", "awq", "--bits", "4", "--group-size", "64",
                 "--calibration", str(calibration_file), "--nsamples", "8", "--seqlen", "64"])
    assert code == 0
    assert "awq" in capsys.readouterr().out
    config = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "awq" and config["group_size"] == 64 and config["version"] == "gemm"
    model = qcore.load_quantized(dst, progress=False)
    assert len(model.qcore_modules) == 14
    float_model = qcore.load_quantized(float_dir, progress=False)
    ids = torch.randint(0, 300, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (model(ids).logits - float_model(ids).logits).norm() / float_model(ids).logits.norm()
    assert err < 0.2


def test_calibration_text_shorter_than_a_window_fails_before_any_work(float_dir, tmp_path):
    from transformers import AutoTokenizer

    short = tmp_path / "short.txt"
    short.write_text("Only a few words.", encoding="utf-8")
    model = qcore.load_quantized(float_dir, progress=False)
    calls = []
    model.model.embed_tokens.register_forward_pre_hook(lambda *_: calls.append(1))  # any forward at all

    with pytest.raises(CalibrationError, match="fewer than seqlen=64"):
        qcore.quantize(model, qcore.config("awq", group_size=64), calibration=short.read_text(),
                       tokenizer=AutoTokenizer.from_pretrained(float_dir), nsamples=4, seqlen=64, progress=False)
    assert not calls
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_unknown_architecture_is_named_before_any_block(float_dir):
    model = qcore.load_quantized(float_dir, progress=False)
    model.config.model_type = "mystery"
    ids = torch.randint(0, 300, (2, 16))
    with pytest.raises(ConfigError, match="architecture 'mystery'.*llama, mistral, qwen2"):
        qcore.quantize(model, qcore.config("awq", group_size=64), calibration=ids, progress=False)
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_group_size_that_does_not_divide_fails_before_any_block(float_dir):
    model = qcore.load_quantized(float_dir, progress=False)
    ids = torch.randint(0, 300, (2, 16))
    with pytest.raises(ConfigError, match=r"model.layers.0.self_attn.q_proj: in_features=64 is not a multiple of group_size=96"):
        qcore.quantize(model, qcore.config("awq", group_size=96), calibration=ids, progress=False)
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
