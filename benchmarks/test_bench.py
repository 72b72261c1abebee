"""The benchmark report: ratios against the float32 row, markdown, memory checks, a real worker run."""

import json

from bench import add_ratios, markdown, memory_checks, run_job


def rows():
    return [
        {"name": "float32", "kind": "float", "size_bytes": 400, "decode_ms_per_token": 10.0, "prefill_tokens_per_s": 100.0,
         "load_peak_rss": 400, "perplexity": 20.0, "load_s": 1.0},
        {"name": "m4", "kind": "qcore", "size_bytes": 100, "decode_ms_per_token": 5.0, "prefill_tokens_per_s": 50.0,
         "load_peak_rss": 120, "quantize_peak_rss": 10**12, "perplexity": 22.0, "load_s": 0.5, "quantize_s": 2.0},
        {"name": "broken", "kind": "upstream", "error": "ImportError: no"},
    ]


def test_ratios_are_against_float32():
    r = rows()
    add_ratios(r)
    assert r[1]["size_ratio"] == 0.25 and r[1]["decode_speedup"] == 2.0 and r[1]["ppl_ratio"] == 1.1
    assert r[1]["prefill_ratio"] == 0.5 and "size_ratio" not in r[2]


def test_markdown_lists_every_row_and_failures():
    r = rows()
    add_ratios(r)
    results = {"machine": {"date": "d", "cpu": "c", "cores": 2, "memory_gb": 1, "torch": "t", "python": "p"},
               "models": {"tiny": r}, "memory_checks": memory_checks(r, 400, 10, "tiny")}
    text = markdown(results)
    assert "| m4 | qcore | 0 | 0.25 |" in text and "failed: ImportError: no" in text
    assert "OVER" in text  # the absurd quantize peak is flagged
    json.dumps(results)


def test_a_worker_measures_a_float_model_in_a_subprocess(float_dir):
    result = run_job({"name": "float32", "kind": "float", "dtype": "float32", "src": str(float_dir), "tokenizer": None}, 300)
    assert "error" not in result, result
    assert result["load_peak_rss"] >= 0 and result["decode_ms_per_token"] > 0 and result["prefill_tokens_per_s"] > 0


def test_kernel_table_is_ratios_to_float32():
    kernels = [{"name": "float32 F.linear", "kind": "kernel", "ms_1": 0.1, "ms_64": 1.0},
               {"name": "m4 (native)", "kind": "kernel", "ms_1": 0.05, "ms_64": 2.0},
               {"name": "m4 (plain torch)", "kind": "kernel", "error": "boom"}]
    results = {"machine": {"date": "d", "cpu": "c", "cores": 2, "memory_gb": 1, "torch": "t", "python": "p"},
               "models": {}, "kernels": kernels}
    text = markdown(results)
    assert "| m4 (native) | 0.050 | 2.00 | 2.000 | 0.50 |" in text and "| m4 (plain torch) | failed: boom" in text


def test_a_kernel_worker_times_one_layer(float_dir):
    result = run_job({"name": "float32 F.linear", "kind": "kernel", "path": "float", "dtype": "float32", "src": str(float_dir)}, 300)
    assert "error" not in result, result
    assert result["ms_1"] > 0 and result["ms_64"] > 0


def test_gptqmodel_row_without_its_env_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setenv("QCORE_GPTQMODEL_PYTHON", str(tmp_path / "missing" / "python"))
    result = run_job({"name": "gptqmodel-w4g128", "kind": "upstream", "src": str(tmp_path)}, 60)
    assert "tox -e gptq-interop" in result["error"]
