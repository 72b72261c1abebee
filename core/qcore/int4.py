"""Affine int4 (``W = s * (q - z)`` per group) and int8 row-scale weights on a plugin's shared CPU kernels.

Every affine 4-bit format (GPTQ, AWQ, HQQ, torchao int4) is, per output row ``n`` and group ``g`` of
``group_size`` inputs, ``W[n, k] = scales[n, g] * (codes[n, k] - zeros[n, g])`` with codes 0..15 and a
zero that may be an integer (GPTQ, AWQ, torchao) or a float (HQQ). This module runs that on the
kernels a plugin builds from ``qcore/lut4.h`` (registered with :func:`qcore.lut4.register_ops` under
``torch.ops.<namespace>``), as::

    y = lut4(x, codes, scales) - (sum of x per group) @ (scales * zeros).T

with ``code = 0..15`` (exact; integer codes also make the int8-activation path exact on the weight
side). No float weight is materialized per decode step.

Choosing a layout (:func:`affine_int4_weight`):

- the plugin's binary is present and the groups tile the kernel's blocks: :class:`Int4LutWeight`
  (``lut4_gemm``; ``lut4_gemm_q8`` when :func:`qcore.lut4.int8_activations_default` and groups of a
  multiple of 64; more than ``gemv_rows`` rows dequantize in C and let torch multiply).
- no binary (installed without a C compiler), shapes torch's packed int4 GEMM takes (groups of
  32/64/128/256, ``n % 16 == 0``): :class:`Int4PackWeight` on ``aten._weight_int4pack_mm_for_cpu``
  (``x @ ((q - 8) * s + b)`` per group with ``b = s * (8 - z)``).
- no binary, other shapes: :class:`Int4LutWeight` anyway, whose ops then run their torch
  definition (the byte-pair table; dequantize + matmul past ``gemv_rows`` rows).

Each layout is the weight's only resident copy: :meth:`codes` rebuilds the codes bit for bit (for
saving and dequantizing), the plugin drops its checkpoint tensor once a layout exists.

:class:`Int8RowWeight` is the 8-bit sibling: int8 ``weight (n, k)`` times one float32 scale per row
(``int8_gemm``; the weight tensor is used as given, no copy).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from qcore import lut4, native
from qcore.packing import pack_uint4_pairs, unpack_uint4_pairs

INT4PACK_GROUP_SIZES = (32, 64, 128, 256)  # what aten._weight_int4pack_mm_for_cpu takes


@dataclass(frozen=True)
class KernelOps:
    """A plugin's lookup ops: ``namespace`` (``torch.ops.<namespace>``), the checked Python implementations
    :func:`qcore.lut4.register_ops` returned (called directly on the hot path, 3x cheaper than the dispatcher),
    and its ``library()`` loader (None: no binary)."""

    namespace: str
    impl: Mapping[str, Callable]
    library: Callable[[], ctypes.CDLL | None]

    def op(self, name: str) -> Callable:
        """The op itself under ``torch.compile`` (the compiler sees the custom op), else its implementation."""
        if torch.compiler.is_compiling():
            return getattr(getattr(torch.ops, self.namespace), name)
        return self.impl[name]

    def native(self) -> bool:
        return self.library() is not None

    def bound(self, owner: _Bindable, name: str, *args: object) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x (..., k) -> op(x, *args) (..., n)``: under ``torch.compile`` the op, else a call with the weight ``args`` checked once
        (:func:`qcore.lut4.register_ops`' ``bind``), kept on ``owner`` until a tensor attribute of it is set
        (``.to()`` moves replace them)."""
        if torch.compiler.is_compiling():
            op = getattr(getattr(torch.ops, self.namespace), name)
            return lambda x: op(x.reshape(-1, x.shape[-1]), *args).view(*x.shape[:-1], -1)
        cached = owner.__dict__.get("_bound")
        if cached is None or cached[0] != name:
            cached = owner.__dict__["_bound"] = (name, self.impl["bind"](name, *args))
        return cached[1]


class _Bindable:
    """A weight layout whose decode call is bound to its tensors (:meth:`KernelOps.bound`): setting any tensor
    attribute drops the binding."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            self.__dict__.pop("_bound", None)
        object.__setattr__(self, name, value)


def plugin_ops(namespace: str, prefix: str,
               what_instead: str = "torch int4/int8 kernels (_weight_int4pack_mm_for_cpu, _weight_int8pack_mm)",
               more_signatures: Callable[[], dict[str, tuple]] | None = None) -> KernelOps:
    """Register the lookup ops of a plugin whose ``_kernels`` binary is ``QC_LUT4_EXPORTS(prefix)`` (its
    ``ops.py`` calls this once): ``torch.ops.<namespace>.{lut4_gemm, lut4_gemm_affine, lut4_gemm_q8, lut4_dequantize,
    int8_gemm, f32_gemm}``, checked before any pointer reaches C; the binary is loaded on first use (None, warned once, without it:
    the ops run their torch definitions and this module picks torch's own int4 GEMM where it can;
    ``what_instead`` names that path in the warning). ``more_signatures``: the ctypes signatures of whatever else
    the binary exports (e.g. :func:`qcore.fp8.signatures` for ``QC_FP8_EXPORTS``), set on the same load."""

    def signatures() -> dict[str, tuple]:
        return {**lut4.signatures(prefix), **(more_signatures() if more_signatures else {})}

    def library() -> ctypes.CDLL | None:
        return native.load_library(namespace, "_kernels", signatures, what_instead=what_instead)

    return KernelOps(namespace, lut4.register_ops(namespace, prefix, library), library)


def isa(ops: KernelOps, prefix: str) -> str:
    """The SIMD variant a plugin's binary runs on this CPU ("avx512", "avx2", "portable"), or "torch" without it."""
    lib = ops.library()
    return "torch" if lib is None else lut4.ISA_NAMES[getattr(lib, f"{prefix}_isa")()]


def int4pack_supported(group_size: int, n: int, k: int) -> bool:
    """Whether torch's CPU int4 GEMM takes a (n, k) weight in groups of ``group_size``."""
    return (group_size in INT4PACK_GROUP_SIZES and n % 16 == 0 and k > 0 and k % group_size == 0
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"))


def _padded(k: int, group_size: int) -> int:
    return -(-k // group_size) * group_size


class _AffineInt4(_Bindable):
    """What both layouts share: groups, the optional column order, padding and the codes' way back."""

    gemv_rows = 8

    def _setup(self, codes: torch.Tensor, scales: torch.Tensor, group_size: int, perm: torch.Tensor | None) -> torch.Tensor:
        if codes.dim() != 2 or scales.dim() != 2:
            raise ValueError(f"codes and scales must be 2-D (n, k) and (n, groups), got {list(codes.shape)}, {list(scales.shape)}")
        self.out_features, self.in_features = codes.shape
        self.group_size = group_size
        k = _padded(self.in_features, group_size)
        if scales.shape != (self.out_features, k // group_size):
            raise ValueError(f"scales have shape {list(scales.shape)}, expected {[self.out_features, k // group_size]} "
                             f"for codes {list(codes.shape)} in groups of {group_size}")
        self.pad = k - self.in_features
        self.perm = None if perm is None or torch.equal(perm, torch.arange(self.in_features)) else perm.to(torch.int64)
        self.shape = (self.out_features, k)  # (n, padded k), row-major
        q = codes.to(torch.uint8)
        if self.perm is not None:
            q = q[:, self.perm]
        if self.pad:
            q = torch.nn.functional.pad(q, (0, self.pad))  # code 0 times zero inputs
        return q.contiguous()

    def _grouped_x(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (rows, padded k): columns in group order, zero inputs for the padding."""
        x2 = x.reshape(-1, x.shape[-1])
        if self.perm is None and not self.pad:
            return x2
        if self.perm is not None:
            x2 = x2[:, self.perm]
        return torch.nn.functional.pad(x2, (0, self.pad)) if self.pad else x2

    def _original_order(self, q: torch.Tensor) -> torch.Tensor:
        """Codes (n, padded k) in group order -> (n, in) in x's column order."""
        q = q[:, : self.in_features]
        if self.perm is None:
            return q.contiguous()
        out = torch.empty_like(q)
        out[:, self.perm] = q
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """The resident tensors by attribute name (a module's ``_apply`` moves them)."""
        raise NotImplementedError

    def codes(self) -> torch.Tensor:
        """uint8 codes (n, in) 0..15 in x's column order, bit for bit as given."""
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W (n, in) in ``dtype`` = s * (q - z) in float32, rounded once."""
        n, k = self.shape
        q = self._grouped_codes().float().view(n, -1, self.group_size)
        s, sz = self._scales_2d(), self._scaled_zeros_2d()
        w = (q * s.unsqueeze(-1) - sz.unsqueeze(-1)).view(n, k)
        return self._original_order(w).to(dtype)


class Int4LutWeight(_AffineInt4):
    """An affine int4 weight on the plugin's lookup GEMV (``torch.ops.<namespace>.lut4_gemm``).

    Resident: ``packed`` uint8 ``(n * padded_k / 2,)`` (lut4's layout: row-major nibbles, high first),
    float32 ``scales`` and ``scaled_zeros`` (``s * z``), each ``(n * groups,)`` (block ``n * groups + g``),
    and the 16-entry ``code`` / ``code_i8`` tables (0..15). Decoding is one ``lut4_gemm_affine`` call.
    """

    max_rows = 1 << 62  # takes any number of rows itself

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                 ops: KernelOps, perm: torch.Tensor | None = None, scaled_zeros: torch.Tensor | None = None) -> None:
        """codes (n, in) integers 0..15; scales, zeros (n, groups) float (zeros may be fractional);
        ``perm`` (in,): x's columns in group order (act-order), None when already so. ``scaled_zeros``
        (n, groups) float: ``s * z`` given directly (formats that store an additive offset ``b`` in
        ``W = s * q + b`` pass ``-b``); ``zeros`` is then unused and may be None. ValueError when the
        groups do not fit the kernel (blocks of a multiple of 16, at most 4096 values)."""
        q = self._setup(codes, scales, group_size, perm)
        n, k = self.shape
        if not lut4.supported(group_size, n, k):
            raise ValueError(f"groups of {group_size} do not fit the lookup kernel (a multiple of 16, at most {lut4.MAX_BLOCK})")
        self.ops = ops
        self.packed = pack_uint4_pairs(q)
        self.scales = scales.float().contiguous().view(-1)
        self.scaled_zeros = _scaled_zeros(scales, zeros, scaled_zeros).contiguous().view(-1)
        self.code = torch.arange(16, dtype=torch.float32)
        self.code_i8 = torch.arange(16, dtype=torch.int8)  # integer codes: exact in the int8 path
        # decode with x quantized to int8 per 64 values (lut4_gemm_q8): faster, approximate; see qcore.lut4
        self.int8_activations = lut4.int8_activations_default() and lut4.supported_q8(group_size, n, k)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales": self.scales, "scaled_zeros": self.scaled_zeros, "code": self.code,
                "code_i8": self.code_i8}

    def _grouped_codes(self) -> torch.Tensor:
        return unpack_uint4_pairs(self.packed).view(self.shape)

    def _scales_2d(self) -> torch.Tensor:
        return self.scales.view(self.out_features, -1)

    def _scaled_zeros_2d(self) -> torch.Tensor:
        return self.scaled_zeros.view(self.out_features, -1)

    def codes(self) -> torch.Tensor:
        return self._original_order(self._grouped_codes())

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32/bfloat16/float16 -> (..., n) in x's dtype, accumulated in float32."""
        n, k = self.shape
        if (x.dtype is torch.float32 and self.perm is None and not self.pad and not self.int8_activations
                and x.numel() <= self.gemv_rows * k and x.is_contiguous()):  # decoding: one call, the zero term included
            return self.ops.bound(self, "lut4_gemm_affine", self.packed, self.scales, self.code, self.scaled_zeros, n,
                                  k, self.group_size)(x)
        # float32 throughout: s*q and s*z are each larger than their difference, so a 16-bit
        # product would lose the bits the subtraction needs
        x2 = self._grouped_x(x)
        if x2.dtype is not torch.float32 or not x2.is_contiguous():
            x2 = x2.float().contiguous()
        if self.int8_activations and x2.shape[0] <= lut4.Q8_MAX_ROWS:
            y = self.ops.op("lut4_gemm_q8")(x2, self.packed, self.scales, self.code_i8, 1.0, n, k, self.group_size)
            # the zero-point term on the same int8 x the kernel used, so s*(q - z) sees one x
            q, dx = lut4.quantize_rows_q8(x2)
            x2 = (q.float().view(q.shape[0], -1, lut4.Q8_BLOCK) * dx.unsqueeze(-1)).view_as(x2)
        elif x2.shape[0] <= self.gemv_rows:  # decoding: one call, the zero term included
            y = self.ops.bound(self, "lut4_gemm_affine", self.packed, self.scales, self.code, self.scaled_zeros, n, k,
                               self.group_size)(x2)
            return (y if x.dtype is torch.float32 else y.to(x.dtype)).view(x.shape[:-1] + (n,))
        else:
            training = torch.is_grad_enabled() and x.requires_grad
            w = torch.empty(n, k) if training else lut4.scratch(n * k, torch.float32).view(n, k)
            self.ops.op("lut4_dequantize")(self.packed, self.scales, self.code, n, k, self.group_size, w)
            y = x2 @ w.T
        y = y.addmm(x2.view(x2.shape[0], -1, self.group_size).sum(-1), self._scaled_zeros_2d().T, alpha=-1)
        return y.to(x.dtype).reshape(*x.shape[:-1], n)


@functools.lru_cache(maxsize=4)
def int4pack_positions(n: int, k: int) -> torch.Tensor:
    """Where torch's CPU int4 packing puts each code: int32 (n*k,), the index of code (row, col) in the
    packed tensor's nibble stream (byte i -> nibbles 2i (low), 2i+1 (high)). Only for reading codes back
    (saving, dequantizing) from a layer without the binary; cached for the last few shapes (4 bytes a weight).

    Learnt by packing probes whose codes spell out their own positions, 4 bits per probe, so it holds
    for whatever blocking this build of torch uses (it depends on the CPU's vector width).
    """
    numel = n * k
    index = torch.arange(numel, dtype=torch.int64)
    source = torch.zeros(numel, dtype=torch.int64)
    for shift in range(0, max(numel - 1, 1).bit_length(), 4):
        probe = ((index >> shift) & 15).to(torch.int32).view(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
        nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        source |= nibbles << shift
    positions = torch.empty(numel, dtype=torch.int32)
    positions[source] = torch.arange(numel, dtype=torch.int32)
    return positions


class Int4PackWeight(_AffineInt4):
    """An affine int4 weight on torch's packed CPU int4 GEMM (``aten._weight_int4pack_mm_for_cpu``),
    for plugins installed without their binary.

    The kernel computes ``x @ ((q - 8) * s + b)`` per group; ``b = s * (8 - z)`` folds any zero (integer
    or float). Its time grows linearly with the rows of x: up to ``max_rows`` rows (decoding) it
    multiplies, past that the layer's caller dequantizes. ``compute_dtype`` None multiplies in x's dtype
    (exact float32; torch's kernel is vectorized for bfloat16 only, ~15-30x slower in float32);
    bfloat16 rounds x, s and b to bfloat16 (fast, approximate).

    Resident: ``packed`` (torch's layout), float32 ``scales_and_zeros (groups, n, 2)``.
    """

    max_rows = 8

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                 perm: torch.Tensor | None = None, compute_dtype: torch.dtype | None = None,
                 scaled_zeros: torch.Tensor | None = None) -> None:
        q = self._setup(codes, scales, group_size, perm)
        n, k = self.shape
        if not int4pack_supported(group_size, n, k):
            raise ValueError(f"torch's int4 GEMM does not take a ({n}, {k}) weight in groups of {group_size}")
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        s = scales.float()
        b = s * (8 - zeros.float()) if scaled_zeros is None else 8 * s - scaled_zeros.float()
        self.scales_and_zeros = torch.stack([s.T, b.T], dim=-1).contiguous()
        self.compute_dtype = compute_dtype

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"packed": self.packed, "scales_and_zeros": self.scales_and_zeros}

    def _grouped_codes(self) -> torch.Tensor:
        nibbles = torch.stack([self.packed & 15, self.packed >> 4], dim=-1).reshape(-1)
        return nibbles[int4pack_positions(*self.shape)].view(self.shape)

    def _scales_2d(self) -> torch.Tensor:
        return self.scales_and_zeros[..., 0].T

    def _scaled_zeros_2d(self) -> torch.Tensor:
        s, b = self.scales_and_zeros[..., 0].T, self.scales_and_zeros[..., 1].T
        return 8 * s - b  # s * z

    def codes(self) -> torch.Tensor:
        return self._original_order(self._grouped_codes())

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32/bfloat16/float16 -> (..., n) in x's dtype."""
        dtype = self.compute_dtype or (x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32)
        x2 = self._grouped_x(x).to(dtype).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros.to(dtype))
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def _scaled_zeros(scales: torch.Tensor, zeros: torch.Tensor | None, scaled_zeros: torch.Tensor | None) -> torch.Tensor:
    """``s * z`` (n, groups) float32, from zeros or given directly."""
    if scaled_zeros is not None:
        if scaled_zeros.shape != scales.shape:
            raise ValueError(f"scaled_zeros have shape {list(scaled_zeros.shape)}, expected {list(scales.shape)}")
        return scaled_zeros.float()
    if zeros is None:
        raise ValueError("give zeros or scaled_zeros")
    return scales.float() * zeros.float()


def affine_int4_weight(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                       ops: KernelOps, perm: torch.Tensor | None = None, fallback_dtype: torch.dtype | None = None,
                       scaled_zeros: torch.Tensor | None = None) -> Int4LutWeight | Int4PackWeight | None:
    """The fast CPU layout for ``W = scales * (codes - zeros)`` per group, or None when neither kernel takes it.

    :param codes: (n, in) integers 0..15 (any integer dtype), in x's column order.
    :param scales: (n, groups) float; ``groups = ceil(in / group_size)`` (a partial last group is padded).
    :param zeros: (n, groups), integer-valued or float (HQQ).
    :param group_size: inputs per group.
    :param ops: the plugin's kernels (:class:`KernelOps`).
    :param perm: (in,) int64, x's columns in group order (GPTQ act-order), or None.
    :param fallback_dtype: compute dtype of torch's int4 GEMM when the binary is missing (None: x's dtype).
    :param scaled_zeros: (n, groups) float ``s * z`` given directly instead of ``zeros`` (which may then be
        None): for formats storing ``W = s * q + b`` pass ``-b``, with no division by ``s``.
    """
    n, k = codes.shape
    padded = _padded(k, group_size)
    if ops.native() and lut4.supported(group_size, n, padded):
        return Int4LutWeight(codes, scales, zeros, group_size, ops, perm, scaled_zeros)
    if not ops.native() and int4pack_supported(group_size, n, padded):
        return Int4PackWeight(codes, scales, zeros, group_size, perm, fallback_dtype, scaled_zeros)
    if lut4.supported(group_size, n, padded):
        return Int4LutWeight(codes, scales, zeros, group_size, ops, perm, scaled_zeros)  # its ops' torch definition
    return None


class Int8RowWeight(_Bindable):
    """``y = x @ (weight * scales[:, None]).T``: int8 ``weight (n, k)``, float32 ``scales (n,)``.

    Up to ``gemv_rows`` rows (decoding), the plugin's int8 GEMV (``int8_gemm``; torch's
    ``_weight_int8pack_mm`` without the binary); more rows (prefill), the weight is scaled into a reused
    float32 buffer in one pass and torch multiplies. ``weight`` is held as given (no copy when it is
    already a contiguous int8 tensor), so it can be the checkpoint's own tensor.
    """

    max_rows = 1 << 62
    gemv_rows = 8

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, ops: KernelOps) -> None:
        if weight.dtype != torch.int8 or weight.dim() != 2 or scales.numel() != weight.shape[0]:
            raise ValueError(f"expected int8 weight (n, k) and n scales, got {weight.dtype} {list(weight.shape)} and "
                             f"{scales.numel()} scales")
        self.ops = ops
        self.weight = weight.contiguous()
        self.scales = scales.reshape(-1).float().contiguous()
        self.out_features, self.in_features = weight.shape

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "scales": self.scales}

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.scales.unsqueeze(1)).to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., k) float32/bfloat16/float16 -> (..., n) in x's dtype."""
        if x.dtype is torch.float32 and x.numel() <= self.gemv_rows * self.in_features and x.is_contiguous():
            return self.ops.bound(self, "int8_gemm", self.weight, self.scales)(x)  # decoding, x as given
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= self.gemv_rows:
            if x2.dtype is not torch.float32 or not x2.is_contiguous():
                x2 = x2.float().contiguous()
            y = self.ops.bound(self, "int8_gemm", self.weight, self.scales)(x2)
            return (y if x.dtype is torch.float32 else y.to(x.dtype)).view(x.shape[:-1] + (self.out_features,))
        if x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad):
            w = lut4.scratch(self.weight.numel(), torch.float32).view(self.weight.shape)
            torch.mul(self.weight, self.scales.unsqueeze(1), out=w)
            y = torch.nn.functional.linear(x2, w)
        else:
            y = torch.nn.functional.linear(x2, self.weight.to(x.dtype) * self.scales.to(x.dtype).unsqueeze(1))
        return y.reshape(*x.shape[:-1], self.out_features)


class FloatDecodeLinear(torch.nn.Linear):
    """An ``nn.Linear`` left unquantized (the output head every method keeps in float by default) whose
    decode-sized float32 CPU inputs run the plugin's float32 GEMV (``f32_gemm``); everything else (more than
    ``gemv_rows`` rows, other dtypes or devices, gradients, ``torch.compile``) is ``nn.Linear``'s forward.

    torch 2.13's float32 ``F.linear`` of one row reads W at about a third of the memory bandwidth on the
    CPUs measured (SmolLM2's tied 49152 x 576 head: 14 ms a token, 4.7 ms in the GEMV at 2 threads,
    docs/kernels.md); the result differs from torch's only in float32 summation order. Made by
    :func:`decode_float_linears`, which swaps the class in place: parameters, tying and state dict stay
    as they are.
    """

    gemv_rows = 8
    decode_ops: KernelOps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.dtype is torch.float32 and w.dtype is torch.float32 and type(w) in (torch.nn.Parameter, torch.Tensor)
                and x.is_cpu and w.is_cpu and x.dim() >= 1 and x.numel() <= self.gemv_rows * x.shape[-1]
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
                and not torch.compiler.is_compiling()):
            y = self.decode_ops.impl["f32_gemm"](x.reshape(-1, x.shape[-1]).contiguous(), w)
            y = y.view(x.shape[:-1] + (self.out_features,))
            return y if self.bias is None else y + self.bias
        return super().forward(x)


def decode_float_linears(model: torch.nn.Module, ops: KernelOps) -> int:
    """Make every plain ``nn.Linear`` of ``model`` (the layers a method left in float) a :class:`FloatDecodeLinear`
    on ``ops``, in place, when the plugin's binary is present; the number converted. Plugins call it from
    ``process_after_weight_loading``."""
    if not ops.native():
        return 0
    converted = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and type(module.weight) is torch.nn.Parameter
                and module.weight.dtype.is_floating_point):
            module.__class__ = FloatDecodeLinear
            module.decode_ops = ops
            converted += 1
    return converted
