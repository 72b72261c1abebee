import json
import subprocess
import sys

import pytest

from qcore.cli import build_parser, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "qcore.cli", *args], capture_output=True, text=True, timeout=300)


def test_plugins_json():
    result = run_cli("plugins", "--json")
    report = json.loads(result.stdout)
    example = next(p for p in report["plugins"] if p["name"] == "example")
    assert example["distribution"] == "qcore-plugin-example" and example["version"] == "0.1.0"
    assert example["methods"] == ["example_int8"] and "example-int8" in example["presets"]
    assert "create_quantized_param" in example["hooks"]


def test_the_console_script_is_installed():
    import shutil

    exe = shutil.which("qcore") or str(__import__("pathlib").Path(sys.executable).parent / "qcore")
    result = subprocess.run([exe, "plugins"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "example_int8" in result.stdout


@pytest.mark.parametrize("command", ["plugins", "inspect", "quantize", "eval", None])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    assert "usage: qcore" in capsys.readouterr().out


def test_quantize_then_inspect(float_dir, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", str(float_dir), str(out), "--preset", "example-int8"]) == 0
    result = run_cli("inspect", str(out), "--json")
    report = json.loads(result.stdout)
    assert report["quant_method"] == "example_int8"
    assert report["bytes_by_dtype"]["I8"] > 0


def test_quantize_with_method_and_options(float_dir, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", str(float_dir), str(out), "--method", "example_int8", "-o", 'modules_to_not_convert=["mlp"]']) == 0
    result = run_cli("inspect", str(out), "--json")
    assert json.loads(result.stdout)["quantization_config"]["modules_to_not_convert"] == ["mlp"]


def test_errors_are_one_line_without_traceback(float_dir, tmp_path):
    result = run_cli("quantize", str(float_dir), str(tmp_path / "x"), "--method", "nosuch")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("qcore: error: unknown quantization method 'nosuch'")
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("quantize", str(float_dir), str(tmp_path / "x"), "--method", "example_int8", "-o", "bitz=8")
    assert result.returncode == 1 and "did you mean 'bits'" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("--debug", "inspect", str(tmp_path / "none"))
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_existing_output_is_not_overwritten(float_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    result = run_cli("quantize", str(float_dir), str(out), "--preset", "example-int8")
    assert result.returncode == 1 and "--overwrite" in result.stderr


def test_help_and_the_plugin_list_do_not_import_torch():
    """`qcore --help` and `qcore plugins` (every installed plugin listed) answer without importing torch."""
    from core_helpers import run_python

    code = ("import sys\nfrom qcore.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['plugins'])\nprint('torch' in sys.modules)")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "BROKEN" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout


def test_public_functions_show_their_real_signatures():
    import inspect

    import qcore

    assert "trust_remote_code" in inspect.signature(qcore.load_quantized).parameters
    assert "calibration" in inspect.signature(qcore.quantize).parameters
    assert "overwrite" in inspect.signature(qcore.save_quantized).parameters
    assert "Load a checkpoint" in qcore.load_quantized.__doc__
