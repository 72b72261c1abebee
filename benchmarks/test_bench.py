"""The benchmark report: ratios against the float32 row, markdown, memory checks, a real worker run."""

import json

from bench import _merge, add_ratios, main, markdown, memory_checks, rounds_job, run_job


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
    r[1]["decode_bytes"] = 50_000_000
    r.append({"name": "fake-quant", "kind": "upstream", "perplexity": 21.0, "quantize_s": 3.0})
    add_ratios(r)
    assert r[1]["size_ratio"] == 0.25 and r[1]["decode_speedup"] == 2.0 and r[1]["ppl_ratio"] == 1.1
    assert r[1]["prefill_ratio"] == 0.5 and "size_ratio" not in r[2]
    assert r[1]["decode_gb_per_s"] == 10.0  # 50 MB in 5 ms
    assert r[3]["ppl_ratio"] == 21.0 / 20.0 and "decode_speedup" not in r[3]
    assert "| fake-quant | upstream | – | – | 21.00 | 1.050 | – |" in markdown(
        {"machine": {"date": "d", "cpu": "c", "cores": 2, "memory_gb": 1, "torch": "t", "python": "p"}, "models": {"t": r}})


def test_a_re_measured_row_replaces_the_old_one_in_place():
    r = rows()
    _merge(r, {"name": "m4 (RTN, no data)", "job": "m4", "kind": "qcore", "error": "new"})
    _merge(r, {"name": "new", "job": "new", "kind": "qcore", "error": "x"})
    assert [x["name"] for x in r] == ["float32", "m4 (RTN, no data)", "broken", "new"]


def test_only_keeps_every_other_row_of_the_last_run(tmp_path):
    r = rows()
    add_ratios(r)
    results = {"machine": {}, "models": {"SmolLM2-135M": r}, "kernels": [], "memory_checks": []}
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.json").write_text(json.dumps(results))
    assert main(["--only", "no-such-row", "--skip-big", "--out", str(tmp_path), "--llamacpp"]) == 0
    kept = json.loads((tmp_path / "benchmarks" / "results.json").read_text())
    assert [x["name"] for x in kept["models"]["SmolLM2-135M"]] == ["float32", "m4", "broken"]
    assert kept["machine"]["copy_gb_per_s"] > 0
    assert "| m4 | qcore |" in (tmp_path / "benchmarks.md").read_text()


def test_markdown_lists_every_row_and_failures():
    r = rows()
    add_ratios(r)
    results = {"machine": {"date": "d", "cpu": "c", "cores": 2, "memory_gb": 1, "torch": "t", "python": "p"},
               "models": {"tiny": r}, "memory_checks": memory_checks(r, 400, 10, "tiny")}
    text = markdown(results)
    assert "| m4 | qcore | 0 | 0.25 | 22.00 | 1.100 | 5.0 | 2.00 |" in text and "failed: ImportError: no" in text
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


def test_llamacpp_row_without_llama_cpp_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("QCORE_LLAMACPP_PYTHON", str(tmp_path / "missing" / "python"))
    result = run_job({"name": "llama.cpp-Q4_0", "kind": "llamacpp", "quant": "Q4_0", "src": str(tmp_path)}, 60)
    assert "pip install llama-cpp-python" in result["error"]


def test_decode_rounds_table_gives_speedups_over_float32_and_the_upstream_pair():
    rounds = {"name": "decode rounds", "kind": "rounds", "rounds": 3,
              "ms": {"float32": 60.0, "hqq-4bit-g64": 40.0, "hqq-lib-4bit-g64": 200.0},
              "ms_all": {"float32": [60.0], "hqq-4bit-g64": [41.0, 40.0, 38.5], "hqq-lib-4bit-g64": [200.0]},
              "split": {"hqq-4bit-g64": {"linear layers": 10.0, "output head": 8.0, "elsewhere": 22.0}}}
    results = {"machine": {"date": "d", "cpu": "c", "cores": 2, "memory_gb": 1, "torch": "t", "python": "p"},
               "models": {}, "decode_rounds": rounds}
    text = markdown(results)
    assert "| hqq-4bit-g64 | 40.0 | 38.5 | 1.50 | 5.00 (hqq-lib-4bit-g64) | 10.0 | 8.0 | 22.0 |" in text
    assert "| hqq-lib-4bit-g64 | 200.0 | 200.0 | 0.30 | – | – | – | – |" in text


def test_a_rounds_worker_decodes_models_in_turn_and_splits_their_time(float_dir, tmp_path):
    import qcore

    qcore.save_quantized(qcore.load_quantized(float_dir, "example-int8", progress=False), tmp_path / "int8")
    job = rounds_job(float_dir, tmp_path, ["example_int8"], [], rounds=2, threads=1)
    job["models"].append(("example_int8", str(tmp_path / "int8")))
    job["tokenizer"] = None
    result = run_job(job, 300)
    assert "error" not in result, result
    assert set(result["ms"]) == {"float32", "bfloat16", "example_int8"} and all(len(v) == 2 for v in result["ms_all"].values())
    assert result["threads"] == 1
    split = result["split"]["example_int8"]
    assert split["linear layers"] > 0 and split["output head"] > 0
    assert abs(sum(split.values()) - result["ms"]["example_int8"]) < result["ms"]["example_int8"]  # same order of magnitude
