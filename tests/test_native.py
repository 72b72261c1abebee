"""qcore.native (loading plugins' prebuilt kernels, argument checks) and qcore.build (compiling them at install)."""

import ctypes
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from qcore import build, native
from qcore.native import KernelArgumentError

SOURCE = textwrap.dedent("""
    #include <qcore/lut4.h>
    QC_LUT4_EXPORTS(qctest)
    QC_EXPORT int64_t qctest_sum(const int32_t *x, int64_t n) {
        int64_t s = 0;
    #pragma omp parallel for reduction(+:s)
        for (int64_t i = 0; i < n; i++) s += x[i];
        return s;
    }
""")


@pytest.fixture(scope="module")
def built_package(tmp_path_factory):
    """A throwaway package whose setup.py builds its kernels with qcore.build, as a plugin's does."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "qctestpkg").mkdir()
    (root / "qctestpkg" / "__init__.py").write_text("")
    (root / "k.c").write_text(SOURCE)
    (root / "setup.py").write_text(textwrap.dedent(f"""
        import importlib.util
        from setuptools import setup
        spec = importlib.util.spec_from_file_location("qcore_build", {build.__file__!r})
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
        setup(name="qctestpkg", packages=["qctestpkg"], ext_modules=[build.extension("qctestpkg._kernels", ["k.c"])],
              cmdclass={{"build_ext": build.BuildExt}})
    """))
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.fixture
def fresh(built_package, monkeypatch):
    monkeypatch.syspath_prepend(str(built_package))
    monkeypatch.setattr(native, "_loaded", {})
    return built_package


SIG = {"qctest_sum": (ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64), "qctest_cpu_isa": (ctypes.c_int,)}


def test_the_build_helper_compiles_a_plain_c_library_that_loads_with_ctypes(fresh):
    lib = native.load_library("qctestpkg", "_kernels", SIG)
    assert lib is not None
    x = torch.arange(1000, dtype=torch.int32)
    assert lib.qctest_sum(x.data_ptr(), x.numel()) == int(x.sum())
    assert native.load_library("qctestpkg", "_kernels", SIG) is lib  # once per process
    assert native.library_path("qctestpkg", "_kernels").parent == fresh / "qctestpkg"


def test_the_binary_holds_every_simd_variant_and_picks_one_at_run_time(fresh):
    symbols = subprocess.run(["nm", str(native.library_path("qctestpkg", "_kernels"))], capture_output=True, text=True).stdout
    if symbols:  # binutils present
        for variant in ("avx512", "avx2", "portable"):
            assert f"qc_lut4_gemm_{variant}" in symbols
    flags = open("/proc/cpuinfo").read()
    expected = 2 if " avx512bw " in flags else 1 if (" avx2 " in flags and " fma " in flags) else 0
    assert native.load_library("qctestpkg", "_kernels", SIG).qctest_cpu_isa() == expected


def test_the_build_does_not_target_the_build_machine():
    assert not any("march" in flag or "mtune" in flag for flag in build.compile_args())
    assert "-fopenmp" in build.compile_args() and "-fopenmp" in build.link_args()


def test_a_missing_binary_warns_once_and_returns_none(fresh, monkeypatch):
    with pytest.warns(RuntimeWarning, match="qctestpkg has no compiled kernels .*_nothing_here.*torch kernels"):
        assert native.load_library("qctestpkg", "_nothing_here", SIG) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load_library("qctestpkg", "_nothing_here", SIG) is None  # no second warning


def test_can_be_switched_off(fresh, monkeypatch):
    monkeypatch.setenv("QCORE_NATIVE", "0")
    assert native.load_library("qctestpkg", "_kernels", SIG) is None


def test_check_tensor_accepts_exactly_the_declared_layout():
    x = torch.zeros(4, 8)
    assert native.check_tensor("op", "x", x, torch.float32, (4, 8)) is x
    for bad, what in ((x.T, "shape"), (x[:, ::2], "shape"), (x.double(), "float64"), (x.view(2, 16), "shape"),
                      (torch.zeros(8, 4).T, "contiguous"), (x.to("meta"), "meta"), ([1.0], "torch.Tensor")):
        with pytest.raises(KernelArgumentError, match=what):
            native.check_tensor("op", "x", bad, torch.float32, (4, 8))


def test_optional_module_is_none_when_missing():
    assert native.optional_module("json") is __import__("json")
    assert native.optional_module("qcore_no_such_module_xyz") is None


def test_the_headers_ship_with_qcore():
    from pathlib import Path

    for header in build.HEADERS:
        assert (Path(build.include_dir()) / "qcore" / header).is_file()


def test_a_compiler_without_openmp_gets_a_single_threaded_build_and_says_so(built_package, tmp_path):
    """As Apple's clang: -fopenmp is refused; the build retries without it, and the log says so."""
    import os
    import shutil

    gcc = shutil.which("gcc") or shutil.which("cc")
    wrapper = tmp_path / "cc-no-openmp"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && {{ echo "unsupported option -fopenmp" >&2; exit 1; }}; done\n'
                       f'exec {gcc} "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "pkg"
    shutil.copytree(built_package, work, ignore=shutil.ignore_patterns("*.so", "build"))
    env = {**os.environ, "CC": str(wrapper), "LDSHARED": f"{wrapper} -shared"}
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building it single-threaded" in proc.stderr
    built = list((work / "qctestpkg").glob("_kernels*.so"))
    assert len(built) == 1
    lib = ctypes.CDLL(str(built[0]))
    lib.qctest_sum.restype = ctypes.c_int64
    x = torch.arange(100, dtype=torch.int32)
    assert lib.qctest_sum(ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(100)) == 4950
