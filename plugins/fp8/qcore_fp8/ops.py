"""qcore-plugin-fp8's CPU kernels as checked torch ops: ``torch.ops.qcore_fp8.{gemv, dequantize}`` (and qcore's
lookup ops, of which it uses ``f32_gemm`` for the layers left in float).

The C code is qcore's shared FP8 kernel (``qcore/include/qcore/fp8.h``), compiled into
``qcore_fp8/_kernels*.so`` when the wheel is built (``csrc/qcore_fp8_kernels.c``, see docs/kernels.md); it
decodes float8_e4m3fn inside the product: no dequantized copy of the weight. The ops and their checks are
:func:`qcore.fp8.register_ops`' (its docstring has their contract):

- ``gemv(x, weight, scale_inv, block_n, block_k) -> y``: ``x (m, k)`` float32 (``m <= MAX_ROWS``) @ the
  dequantized ``weight (n, k)``.T, block scales ``(ceil(n / block_n), ceil(k / block_k))`` or one scale
  (``block_n = block_k = 0``).
- ``dequantize(weight, scale_inv, block_n, block_k, out) -> ()``: the dequantized weight into ``out``
  (float32 bit-identical to ``float32(weight) * scale_inv``, or bfloat16).

Without the binary the same ops run in torch (this package's table-lookup dequantize into a reused
buffer, then ``F.linear``), with one warning.
"""

from __future__ import annotations

from qcore import fp8, int4

from . import kernels

PREFIX = "qcfp8"
NAMESPACE = "qcore_fp8"
MAX_ROWS = fp8.MAX_ROWS
ISA_NAMES = fp8.ISA_NAMES
# the binary also builds qcore's lookup header for its float32 GEMV (f32_gemm: the layers left in float);
# plugin_ops registers those ops too, under the same namespace
OPS = int4.plugin_ops(NAMESPACE, PREFIX, what_instead="torch path (dequantize each FP8 weight, then F.linear)",
                      more_signatures=lambda: fp8.signatures(PREFIX))
library = OPS.library  # the compiled kernels, or None (warned once) without a C compiler


def isa() -> str:
    """The SIMD variant the binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    lib = library()
    return "torch" if lib is None else ISA_NAMES[lib.qcfp8_fp8_isa()]


def cpu_isas() -> list[str]:
    """Every variant this CPU can run (for tests that run each one with :func:`set_isa_cap`)."""
    lib = library()
    return [] if lib is None else list(ISA_NAMES[: lib.qcfp8_cpu_isa() + 1])


def set_isa_cap(name: str) -> None:
    """Cap the variant the kernels pick (tests lower it to run the AVX2 and portable code on an AVX-512 CPU)."""
    lib = library()
    if lib is not None:
        lib.qcfp8_set_isa_cap(ISA_NAMES.index(name))


_OPS = fp8.register_ops(NAMESPACE, PREFIX, library, names=("gemv", "dequantize"),
                        fallback=kernels.dequantize_into_scratch)
gemv = _OPS["gemv"]
dequantize = _OPS["dequantize"]
library()  # opened at import (a ctypes load, or the one warning): torch.compile traces forward without a lock in it
