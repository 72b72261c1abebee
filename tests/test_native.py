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
