"""Bad calls of a plugin's lookup ops, for its crash tests (see docs/kernels.md, "Memory safety").

Each must raise :class:`qcore.native.KernelArgumentError` before a pointer reaches C; plugins run
them in a subprocess (``plugins/*/tests/test_*_ops_safety.py``) so that a crash fails one test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcore.lut4 import MAX_ROWS, Q8_MAX_ROWS


def misuse_cases(namespace: str, bind: Callable | None = None) -> list[tuple[str, Callable[[], object]]]:
    """Calls of ``torch.ops.<namespace>``'s lookup ops with wrong sizes, strides, dtypes and devices, for
    plugin tests: each must raise :class:`qcore.native.KernelArgumentError`, never reach C (a crash).

    The valid base is W (32, 128) in blocks of 64 and x (2, 128); ``("valid ...", call)`` entries are
    correct calls that must succeed (they prove the cases reach the ops at all). ``bind``: the plugin's
    ``KernelOps.impl["bind"]``, whose bound decode calls get their own cases (x of any leading dims).
    """
    ops = getattr(torch.ops, namespace)
    n, k, bs, m = 32, 128, 64, 2
    packed = torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8)
    absmax, code, x = torch.rand(n * k // bs), torch.randn(16), torch.randn(m, k)
    w8, s8 = torch.randint(-128, 128, (n, k), dtype=torch.int8), torch.rand(n)

    def strided(t: torch.Tensor) -> torch.Tensor:  # same shape and dtype, every other element of a larger buffer
        return torch.stack([t, t], dim=-1)[..., 0]

    def gemm(**kw):
        args = {"x": x, "packed": packed, "absmax": absmax, "code": code, "n": n, "k": k, "blocksize": bs, **kw}
        return lambda: ops.lut4_gemm(args["x"], args["packed"], args["absmax"], args["code"], args["n"], args["k"],
                                     args["blocksize"])

    szeros = torch.randn(n * k // bs)

    def affine(**kw):
        args = {"x": x, "packed": packed, "absmax": absmax, "code": code, "szeros": szeros, "n": n, "k": k,
                "blocksize": bs, **kw}
        return lambda: ops.lut4_gemm_affine(args["x"], args["packed"], args["absmax"], args["code"], args["szeros"],
                                            args["n"], args["k"], args["blocksize"])

    def deq(**kw):
        args = {"packed": packed, "absmax": absmax, "code": code, "n": n, "k": k, "blocksize": bs,
                "out": torch.empty(n, k), **kw}
        return lambda: ops.lut4_dequantize(args["packed"], args["absmax"], args["code"], args["n"], args["k"],
                                           args["blocksize"], args["out"])

    code_i8 = torch.randint(-127, 128, (16,), dtype=torch.int8)

    def q8(**kw):
        args = {"x": x, "packed": packed, "absmax": absmax, "code_i8": code_i8, "s": 0.01, "n": n, "k": k,
                "blocksize": bs, **kw}
        return lambda: ops.lut4_gemm_q8(args["x"], args["packed"], args["absmax"], args["code_i8"], args["s"], args["n"],
                                        args["k"], args["blocksize"])

    def int8(**kw):
        args = {"x": x, "weight": w8, "scales": s8, **kw}
        return lambda: ops.int8_gemm(args["x"], args["weight"], args["scales"])

    wf = torch.randn(n, k)

    def f32(**kw):
        args = {"x": x, "weight": wf, **kw}
        return lambda: ops.f32_gemm(args["x"], args["weight"])

    cases = [
        ("valid lut4_gemm", gemm()), ("valid f32_gemm", f32()), ("valid lut4_dequantize", deq()), ("valid int8_gemm", int8()),
        ("valid lut4_gemm_q8", q8()), ("valid lut4_gemm_affine", affine()),
        ("64-byte packed claiming (65536, 4096)", gemm(packed=packed[:64], n=65536, k=4096, absmax=torch.rand(65536 * 64))),
        ("packed one byte short", gemm(packed=packed[:-1])),
        ("packed one byte long", gemm(packed=torch.cat([packed, packed[:1]]))),
        ("packed strided", gemm(packed=strided(packed))),
        ("packed int8", gemm(packed=packed.view(torch.int8))),
        ("packed 2-D", gemm(packed=packed.view(n, k // 2))),
        ("absmax short", gemm(absmax=absmax[:-1])),
        ("absmax float16", gemm(absmax=absmax.half())),
        ("absmax strided", gemm(absmax=strided(absmax))),
        ("code 15 values", gemm(code=code[:15])),
        ("code float64", gemm(code=code.double())),
        ("x transposed", gemm(x=torch.randn(k, m).T)),
        ("x expanded", gemm(x=torch.randn(1, k).expand(m, k))),
        ("x wrong k", gemm(x=torch.randn(m, k + 16))),
        ("x bfloat16", gemm(x=x.bfloat16())),
        ("x 1-D", gemm(x=x[0])),
        ("x 3-D", gemm(x=x.view(1, m, k))),
        ("x too many rows", gemm(x=torch.randn(MAX_ROWS + 1, k))),
        ("x on meta", gemm(x=x.to("meta"))),
        ("blocksize 8", gemm(blocksize=8, absmax=torch.rand(n * k // 8))),
        ("blocksize 0", gemm(blocksize=0)),
        ("blocksize -64", gemm(blocksize=-64)),
        ("blocksize 8192", gemm(blocksize=8192)),
        ("blocksize not tiling rows", gemm(blocksize=96, absmax=torch.rand(n * k // 96 + 1))),
        ("negative n", gemm(n=-32)),
        ("k = 0", gemm(k=0)),
        ("dequantize packed short", deq(packed=packed[:-2])),
        ("dequantize absmax short", deq(absmax=absmax[:3])),
        ("dequantize out wrong shape", deq(out=torch.empty(n, k - 16))),
        ("dequantize out too small for the claimed shape", deq(n=4 * n, packed=torch.cat([packed] * 4),
                                                             absmax=torch.cat([absmax] * 4))),
        ("dequantize out float16", deq(out=torch.empty(n, k, dtype=torch.float16))),
        ("dequantize out transposed", deq(out=torch.empty(k, n).T)),
        ("dequantize out on meta", deq(out=torch.empty(n, k, device="meta"))),
        ("int8 weight uint8", int8(weight=w8.view(torch.uint8))),
        ("int8 weight transposed", int8(weight=torch.randint(-128, 128, (k, n), dtype=torch.int8).T)),
        ("int8 scales short", int8(scales=s8[:-1])),
        ("int8 scales float16", int8(scales=s8.half())),
        ("int8 x wrong k", int8(x=torch.randn(m, k - 1))),
        ("int8 x strided", int8(x=strided(x))),
        ("int8 x too many rows", int8(x=torch.randn(MAX_ROWS + 1, k))),
        ("int8 weight 1-D", int8(weight=w8.view(-1))),
        ("q8 packed short", q8(packed=packed[:-1])),
        ("q8 code float32", q8(code_i8=code_i8.float())),
        ("q8 code uint8", q8(code_i8=code_i8.view(torch.uint8))),
        ("q8 absmax short", q8(absmax=absmax[:-1])),
        ("q8 blocksize 32", q8(blocksize=32, absmax=torch.rand(n * k // 32))),
        ("q8 x strided", q8(x=strided(x))),
        ("q8 x too many rows", q8(x=torch.randn(Q8_MAX_ROWS + 1, k))),
        ("q8 x wrong k", q8(x=torch.randn(m, k - 64))),
        ("q8 lying shape", q8(n=65536, k=4096, absmax=torch.rand(65536 * 64))),
        ("affine szeros short", affine(szeros=szeros[:-1])),
        ("affine szeros float16", affine(szeros=szeros.half())),
        ("affine szeros strided", affine(szeros=strided(szeros))),
        ("affine szeros 2-D", affine(szeros=szeros.view(n, -1))),
        ("affine packed short", affine(packed=packed[:-1])),
        ("affine x strided", affine(x=strided(x))),
        ("affine x too many rows", affine(x=torch.randn(MAX_ROWS + 1, k))),
        ("affine lying shape", affine(n=65536, k=4096, absmax=torch.rand(65536 * 64), szeros=torch.rand(65536 * 64))),
        ("f32 weight float64", f32(weight=wf.double())),
        ("f32 weight transposed", f32(weight=torch.randn(k, n).T)),
        ("f32 weight 1-D", f32(weight=wf.view(-1))),
        ("f32 weight strided", f32(weight=strided(wf))),
        ("f32 weight on meta", f32(weight=wf.to("meta"))),
        ("f32 x wrong k", f32(x=torch.randn(m, k + 1))),
        ("f32 x bfloat16", f32(x=x.bfloat16())),
        ("f32 x strided", f32(x=strided(x))),
        ("f32 x too many rows", f32(x=torch.randn(MAX_ROWS + 1, k))),
    ]
    if bind is not None:
        bound_affine = bind("lut4_gemm_affine", packed, absmax, code, szeros, n, k, bs)
        bound_int8 = bind("int8_gemm", w8, s8)
        cases += [
            ("valid bound lut4_gemm_affine (1, 1, k)", lambda: bound_affine(x[:1].view(1, 1, k))),
            ("valid bound int8_gemm (2, k)", lambda: bound_int8(x)),
            ("bound x wrong k", lambda: bound_affine(torch.randn(1, 1, k - 16))),
            ("bound x strided", lambda: bound_affine(strided(x))),
            ("bound x transposed", lambda: bound_int8(torch.randn(k, m).T)),
            ("bound x float64", lambda: bound_int8(x.double())),
            ("bound x too many rows", lambda: bound_affine(torch.randn(2, MAX_ROWS // 2 + 1, k))),
            ("bound x on meta", lambda: bound_int8(x.to("meta"))),
            ("bound x 0-D", lambda: bound_int8(torch.tensor(1.0))),
            ("bound x storage shrunk", lambda: bound_affine(_shrunk(torch.randn(1, k)))),
            ("bind lying shape", lambda: bind("lut4_gemm_affine", packed[:64], absmax, code, szeros, 65536, 4096, bs)),
            ("bind int8 weight float32", lambda: bind("int8_gemm", w8.float(), s8)),
            ("bound weight freed (last: it frees the int8 weight)", lambda: (w8.untyped_storage().resize_(0), bound_int8(x))),
        ]
    return cases


def _shrunk(t: torch.Tensor) -> torch.Tensor:
    """t with its storage cut to nothing under it (its shape still claims the old size)."""
    t.untyped_storage().resize_(0)
    return t


_RUNNER = """
from qcore.native import KernelArgumentError

{prelude}
for name, call in cases:
    if name.startswith("valid"):
        call()
        print("ok", name, flush=True)
        continue
    try:
        call()
    except KernelArgumentError as exc:
        print("raised", name, "|", str(exc).splitlines()[0], flush=True)
    else:
        print("ACCEPTED", name, flush=True)
print("alive", flush=True)
"""


def run_cases_in_subprocess(prelude: str, timeout: float = 120) -> str:
    """Run misuse cases in a fresh interpreter: ``prelude`` (Python source) registers the ops and sets
    ``cases`` (``[(name, call)]``); every ``valid ...`` call must succeed, every other one is reported.

    :returns: one line per case: ``ok valid ...``, ``raised <case> | <message>`` or ``ACCEPTED <case>``, then
        ``alive``.
    :raises AssertionError: when the interpreter died (a bad call reached C).
    """
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _RUNNER.format(prelude=prelude)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"the subprocess died (return code {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def run_in_subprocess(package: str, timeout: float = 120) -> str:
    """Run every misuse case of ``package`` (whose ``ops`` module registers the ops) in a fresh interpreter
    (:func:`run_cases_in_subprocess`)."""
    return run_cases_in_subprocess(f"""
import {package}.ops as ops
from qcore import lut4_misuse

assert ops.library() is not None, "the compiled kernels are missing"
kernel_ops = getattr(ops, "OPS", None)
cases = lut4_misuse.misuse_cases("{package}", kernel_ops.impl["bind"] if kernel_ops is not None else None)
""", timeout)
