"""qcore.native: C kernels compiled once per machine, cached, loaded with ctypes; a clear fallback without a compiler."""

import ctypes

import pytest

from qcore import native

SOURCE = """
#include <stdint.h>
int64_t qc_test_sum(const int32_t *x, int64_t n) {
    int64_t s = 0;
#pragma omp parallel for reduction(+:s)
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}
"""
SIG = {"qc_test_sum": (ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)}


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("QCORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", {})
    src = tmp_path / "k.c"
    src.write_text(SOURCE)
    return src


def test_compiles_once_and_reuses_the_cached_library(fresh, monkeypatch):
    import torch

    lib = native.load("test.sum", fresh, SIG)
    assert lib is not None
    x = torch.arange(1000, dtype=torch.int32)
    assert lib.qc_test_sum(x.data_ptr(), x.numel()) == int(x.sum())
    built = list(native.cache_dir().glob("test.sum-*.so"))
    assert len(built) == 1
    assert native.load("test.sum", fresh, SIG) is lib  # same process: no second build
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_loaded", {})  # a new process: loads the cached file, compiles nothing
    monkeypatch.setattr(native, "_compile", lambda *a: pytest.fail("recompiled a cached kernel"))
    assert native.load("test.sum", fresh, SIG).qc_test_sum(x.data_ptr(), 10) == 45
    assert built[0].stat().st_mtime_ns == stamp


def test_an_edited_source_is_rebuilt(fresh):
    native.load("test.sum", fresh, SIG)
    fresh.write_text(SOURCE.replace("s += x[i]", "s += 2 * x[i]"))
    native._loaded.clear()
    lib = native.load("test.sum", fresh, SIG)
    one = (ctypes.c_int32 * 1)(21)
    assert lib.qc_test_sum(ctypes.addressof(one), 1) == 42
    assert len(list(native.cache_dir().glob("test.sum-*.so"))) == 2


def test_a_source_that_does_not_compile_warns_and_falls_back(fresh):
    fresh.write_text("this is not C")
    with pytest.warns(RuntimeWarning, match="could not build the native kernels test.bad; using the plain-torch.*unknown type name"):
        assert native.load("test.bad", fresh, SIG) is None
    assert not list(native.cache_dir().glob("*.so")) and not list(native.cache_dir().glob("*.tmp*"))


def test_no_compiler_warns_and_falls_back(fresh, monkeypatch):
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        assert native.load("test.sum", fresh, SIG) is None


def test_can_be_switched_off(fresh, monkeypatch):
    monkeypatch.setenv("QCORE_NATIVE", "0")
    assert native.load("test.sum", fresh, SIG) is None


def test_optional_module_is_none_when_missing():
    assert native.optional_module("json") is __import__("json")
    assert native.optional_module("qcore_no_such_module_xyz") is None


@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3", "native"])
def test_int8_gemv_matches_float64_in_every_simd_variant(march):
    import platform

    import torch

    from qcore import lut4

    if march != "native" and platform.machine() not in ("x86_64", "AMD64"):
        march = "native"
    library = lut4.lib(march)
    assert library is not None, "qcore/lut4.c did not build: is a C compiler installed?"
    torch.manual_seed(0)
    for n, k in ((40, 100), (7, 576), (3, 33)):  # K not a multiple of the SIMD width: the scalar tail
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        scales = torch.rand(n) + 0.01
        for rows in (1, 3):
            x = torch.randn(rows, k)
            y = lut4.int8_matmul(x, w, scales, library=library)
            exact = x.double() @ (w.double() * scales.double()[:, None]).T
            torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-4 * exact.abs().max().item())
