"""Bad calls of a plugin's FP8 ops (:func:`qcore.fp8.register_ops`), for its crash tests (docs/kernels.md,
"Memory safety").

:func:`run_in_subprocess` runs them in a fresh interpreter: each bad call must raise KernelArgumentError
before a pointer reaches C; one that reached C could crash the process, which the test sees as a dead
subprocess. It prints ``ok <case>``, ``raised <case> | <message>`` or ``ACCEPTED <case>``, then ``alive``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

N, K, BN, BK, M = 32, 128, 16, 48, 2  # grid (2, 3): K is not a multiple of BK (an edge block)
FP8 = torch.float8_e4m3fn


def shrunk(t: torch.Tensor, nbytes: int) -> torch.Tensor:
    """A tensor that keeps its shape while its storage is cut to ``nbytes`` (a lying buffer)."""
    t = t.clone()
    t.untyped_storage().resize_(nbytes)
    return t


def strided(t: torch.Tensor) -> torch.Tensor:
    """Same shape and dtype, every other element of a larger buffer."""
    return torch.stack([t, t], dim=-1)[..., 0]


def misuse_cases(namespace: str, names: tuple[str, str] = ("fp8_gemv", "fp8_dequantize")) -> list[tuple[str, Callable[[], object]]]:
    """The calls of ``torch.ops.<namespace>.<names[0]>`` (GEMV) and ``<names[1]>`` (dequantize); ``("valid ...",
    call)`` entries must succeed (they prove the cases reach the ops at all)."""
    ops = getattr(torch.ops, namespace)
    op_gemv, op_dequantize = (getattr(ops, name) for name in names)
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(N, K, generator=g) * 10).to(FP8)
    inv, x = torch.rand(2, 3, generator=g) + 0.1, torch.randn(M, K, generator=g)

    def gemv(**kw):
        a = {"x": x, "w": w, "s": inv, "bn": BN, "bk": BK, **kw}
        return lambda: op_gemv(a["x"], a["w"], a["s"], a["bn"], a["bk"])

    def deq(**kw):
        a = {"w": w, "s": inv, "bn": BN, "bk": BK, "out": torch.empty(N, K), **kw}
        return lambda: op_dequantize(a["w"], a["s"], a["bn"], a["bk"], a["out"])

    return [
        ("valid gemv", gemv()), ("valid gemv 8 rows", gemv(x=torch.randn(8, K))),
        ("valid gemv per tensor", gemv(s=torch.tensor(0.5), bn=0, bk=0)),
        ("valid dequantize", deq()), ("valid dequantize bfloat16", deq(out=torch.empty(N, K, dtype=torch.bfloat16))),
        ("weight storage cut to 64 bytes", gemv(w=shrunk(w, 64))),
        ("weight storage one byte short", gemv(w=shrunk(w, N * K - 1))),
        ("weight uint8", gemv(w=w.view(torch.uint8))),
        ("weight int8", gemv(w=w.view(torch.int8))),
        ("weight float8_e5m2", gemv(w=w.view(torch.float8_e5m2))),
        ("weight float32", gemv(w=w.float())),
        ("weight transposed", gemv(w=(torch.randn(K, N) * 10).to(FP8).T)),
        ("weight strided", gemv(w=strided(w.view(torch.uint8)).view(FP8))),
        ("weight 1-D", gemv(w=w.view(-1))),
        ("weight 3-D", gemv(w=w.view(1, N, K))),
        ("weight on meta", gemv(w=w.to("meta"))),
        ("weight not a tensor", gemv(w=None)),
        ("scale grid short", gemv(s=inv[:1])),
        ("scale grid by exact division", gemv(s=torch.rand(2, 2))),
        ("scale grid too long", gemv(s=torch.rand(3, 3))),
        ("scale float16", gemv(s=inv.half())),
        ("scale float64", gemv(s=inv.double())),
        ("scale float8_e8m0fnu", gemv(s=inv.to(torch.float8_e8m0fnu))),
        ("scale strided", gemv(s=strided(inv))),
        ("scale transposed", gemv(s=torch.rand(3, 2).T)),
        ("scale flat", gemv(s=inv.reshape(-1))),
        ("scale storage cut", gemv(s=shrunk(inv, 8))),
        ("scale on meta", gemv(s=inv.to("meta"))),
        ("per tensor with a block grid of scales", gemv(bn=0, bk=0)),
        ("per tensor scale with block sizes", gemv(s=torch.tensor(0.5))),
        ("block n negative", gemv(bn=-16)),
        ("block k zero", gemv(bk=0)),
        ("block n zero only", gemv(bn=0)),
        ("block huge negative", gemv(bn=-(2**40))),
        ("x float64", gemv(x=x.double())),
        ("x bfloat16", gemv(x=x.bfloat16())),
        ("x wrong k", gemv(x=torch.randn(M, K + 1))),
        ("x transposed", gemv(x=torch.randn(K, M).T)),
        ("x expanded", gemv(x=torch.randn(1, K).expand(M, K))),
        ("x strided", gemv(x=strided(x))),
        ("x 1-D", gemv(x=x[0])),
        ("x 3-D", gemv(x=x.view(1, M, K))),
        ("x 9 rows", gemv(x=torch.randn(9, K))),
        ("x 4096 rows", gemv(x=torch.randn(4096, K))),
        ("x storage cut", gemv(x=shrunk(x, 16))),
        ("x on meta", gemv(x=x.to("meta"))),
        ("dequantize weight storage cut", deq(w=shrunk(w, 100))),
        ("dequantize weight uint8", deq(w=w.view(torch.uint8))),
        ("dequantize scale short", deq(s=inv[:, :2])),
        ("dequantize out float16", deq(out=torch.empty(N, K, dtype=torch.float16))),
        ("dequantize out float64", deq(out=torch.empty(N, K, dtype=torch.float64))),
        ("dequantize out wrong shape", deq(out=torch.empty(N, K - 1))),
        ("dequantize out transposed", deq(out=torch.empty(K, N).T)),
        ("dequantize out storage cut", deq(out=shrunk(torch.empty(N, K), 64))),
        ("dequantize out expanded", deq(out=torch.empty(1, K).expand(N, K))),
        ("dequantize out on meta", deq(out=torch.empty(N, K, device="meta"))),
        ("dequantize block negative", deq(bk=-48)),
    ]


def run_in_subprocess(package: str, namespace: str, names: tuple[str, str] = ("fp8_gemv", "fp8_dequantize"),
                      timeout: float = 120) -> str:
    """Run every case in a fresh interpreter that imports ``<package>.ops`` (which registers the ops), through
    :func:`qcore.lut4_misuse.run_cases_in_subprocess`: one line per case, then ``alive``."""
    from qcore.lut4_misuse import run_cases_in_subprocess

    return run_cases_in_subprocess(f"""
import {package}.ops as ops
from qcore import fp8_misuse

assert ops.library() is not None, "the compiled kernels are missing"
cases = fp8_misuse.misuse_cases({namespace!r}, {tuple(names)!r})
""", timeout)
