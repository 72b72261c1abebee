"""calibrate(): the layer-by-layer calibration driver behind ``qcore.quantize`` for methods that need data (GPTQ, AWQ).

1. Calibration windows: the text is tokenized once and ``nsamples`` windows of ``seqlen``
   tokens are drawn at seeded random offsets (as the GPTQ reference code samples C4).
2. The inputs of the first decoder block (hidden states and the keyword arguments the
   model passes it: attention mask, position embeddings...) are captured once, by
   running the model up to that block.
3. Block by block: forward hooks on the block's targeted linears feed
   ``calibration_add_batch``; the plugin's ``quantize_calibrated`` returns each quantized
   module, which is swapped in; the block's outputs, recomputed with the quantized
   block, become the next block's inputs (a config with ``next_block_inputs = "float"``,
   AWQ's, passes on the outputs of the block before it was quantized instead, as AutoAWQ
   does). With ``true_sequential`` the linears are
   processed in groups in execution order (those reading the same input together:
   q/k/v, then o, then gate/up, then down), re-running the block between groups.

4. Compute dtype of the block forwards. A method whose config has a ``calibration_dtype``
   field ("auto", "float32" or "bfloat16"; GPTQ has one) has each block run as a copy in that
   dtype: the calibration hooks still get the float linear (its weight, in the model's dtype, is
   what gets quantized) and the inputs in the compute dtype; once a linear is quantized, the copy
   runs its dequantized weight (the plugin's ``dequantize`` hook) in the compute dtype. "auto" is
   bfloat16 where the hardware has bfloat16 dot products (x86 AVX512-BF16 or AMX, Arm BF16, CUDA
   with bf16 support), else float32. Methods without the field (AWQ edits its block in place) run
   the block as it is, in the model's dtype; so does a block under accelerate's offload hooks.

Decoder blocks are found generically: the longest ``nn.ModuleList`` in the model
(``model.model.layers`` for llama-like models). Only the block being calibrated needs
to be on the compute device.

Profile: :func:`last_profile` returns where the latest ``calibrate`` call (``qcore.quantize``
with calibration data, or ``qcore quantize``) spent its time, a plain dict of seconds per phase:

- ``capture``: running the model up to the first block, once;
- ``forward``: block forwards that feed the statistics hooks (true-sequential groups included);
- ``outputs``: block forwards that recompute each block's outputs with its quantized linears;
- ``add_batch`` / ``quantize``: the ``calibration_add_batch`` / ``quantize_calibrated`` hooks,
  less what the plugin books under its own phases (GPTQ: ``hessian``, ``solve``, ``pack``);
  a plugin opens a phase with ``with qcore.calibration.phase("name"):`` inside its hooks;
- ``other``: everything else (checks, windows, moving blocks, copies);
- ``total``: the wall time of the call.

Phases are exclusive (time in a phase opened inside another counts only in the inner one), so
every phase but ``total`` adds up to ``total``.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcore.config import QuantizationConfig
from qcore.errors import CalibrationError, QcoreError
from qcore.modules import get_module, replace_module
from qcore.plugins import registry
from qcore.targeting import select_modules

CalibrationData = str | Path | Sequence[str] | Sequence[torch.Tensor] | torch.Tensor
EARLY_STOP = True  # stop observing forwards once the group has its inputs (tests compare with False)
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class _StopForward(Exception):
    """Raised by the capture hook to stop the model at the first block, and by the observe hooks
    to stop a block once every linear of the group being calibrated has seen its inputs."""


# --- profile -------------------------------------------------------------------------------------
_profile: dict[str, float] = {}
_open_phases: list[list[float]] = []  # per open phase: [seconds spent in phases opened inside it]


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Book the time spent inside the ``with`` block under ``name`` in the calibration profile.

    Exclusive: time in a phase opened inside this one is booked there, not here. Plugins name their
    own steps with it from their calibration hooks (see :func:`last_profile`).
    """
    start = time.perf_counter()
    _open_phases.append([0.0])
    try:
        yield
    finally:
        inner = _open_phases.pop()[0]
        elapsed = time.perf_counter() - start
        _profile[name] = _profile.get(name, 0.0) + elapsed - inner
        if _open_phases:
            _open_phases[-1][0] += elapsed


def last_profile() -> dict[str, float]:
    """Seconds per phase of the latest :func:`calibrate` call in this process (phases in the module docstring)."""
    return dict(_profile)


# --- compute dtype -------------------------------------------------------------------------------
@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, Arm
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bfloat16_is_native(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively (x86 AVX512-BF16 or AMX, Arm BF16, CUDA with bf16 support)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def compute_dtype(config: QuantizationConfig, device: torch.device) -> torch.dtype | None:
    """The dtype the block forwards run in: from the config's ``calibration_dtype`` field; None (the
    block as it is) for methods without that field."""
    choice = getattr(config, "calibration_dtype", None)
    if choice is None:
        return None
    if choice == "auto":
        return torch.bfloat16 if bfloat16_is_native(device) else torch.float32
    if choice not in COMPUTE_DTYPES:
        raise CalibrationError(f"calibration_dtype must be 'auto' or one of {', '.join(COMPUTE_DTYPES)}, got {choice!r}")
    return COMPUTE_DTYPES[choice]


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating-point tensor in it (also inside dicts, tuples and lists) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_cast_floats(v, dtype) for v in value)
    return value


def calibration_windows(
    calibration: CalibrationData, tokenizer: Any, nsamples: int, seqlen: int, seed: int = 0
) -> list[torch.Tensor]:
    """``nsamples`` token windows of shape ``(1, seqlen)`` drawn from the calibration data.

    :param calibration: a text (``str``), a text file (``pathlib.Path``), a list of texts
        (joined by blank lines), or already tokenized ids (a ``(n, seqlen)`` tensor or a list of 1-D/2-D tensors,
        used as they are).
    :raises CalibrationError: when the text has fewer than ``seqlen + 1`` tokens.
    """
    if isinstance(calibration, torch.Tensor):
        return [row.unsqueeze(0) for row in calibration.reshape(-1, calibration.shape[-1])]
    if isinstance(calibration, Sequence) and not isinstance(calibration, str) and calibration and isinstance(calibration[0], torch.Tensor):
        return [t.reshape(1, -1) for t in calibration]
    if isinstance(calibration, Path):
        if not calibration.is_file():
            raise CalibrationError(f"calibration file {calibration} does not exist")
        try:
            text = calibration.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CalibrationError(
                f"calibration file {calibration} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it, "
                "e.g. iconv -f latin1 -t utf-8"
            ) from None
    elif isinstance(calibration, str):
        text = calibration
    else:
        text = "\n\n".join(calibration)
    if tokenizer is None:
        raise CalibrationError("calibration text needs a tokenizer (pass tokenizer=, or pass token ids)")
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if ids.numel() < seqlen + 1:
        raise CalibrationError(
            f"calibration text has {ids.numel()} tokens, fewer than seqlen={seqlen} + 1; give more text or a smaller seqlen"
        )
    if ids.numel() < nsamples * seqlen:
        warnings.warn(
            f"calibration text has {ids.numel()} tokens but {nsamples} windows of {seqlen} ask for {nsamples * seqlen}: "
            "the windows overlap and repeat the same text; give more (and more varied) text",
            stacklevel=3,
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=generator)
    return [ids[s : s + seqlen].unsqueeze(0) for s in starts.tolist()]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the longest nn.ModuleList in the model, with its name."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise QcoreError("found no nn.ModuleList of decoder blocks in the model; calibration needs a block-structured model")
    return max(lists, key=lambda item: len(item[1]))


def _capture_first_block_inputs(model: nn.Module, block: nn.Module, windows: list[torch.Tensor], device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    inputs: list[torch.Tensor] = []
    kwargs_list: list[dict[str, Any]] = []

    def capture(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.append(hidden.detach())
        kwargs_list.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            for window in windows:
                try:
                    model(window.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    if len(inputs) != len(windows):
        raise QcoreError("the model never reached its first decoder block during calibration")
    return inputs, kwargs_list


BATCH = 8  # calibration windows run through a block together


def _same_kwargs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when two captured keyword-argument dicts hold equal values (tensors compared by value)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, tuple | list) and isinstance(y, tuple | list):
            if len(x) != len(y) or not all(_same_value(u, v) for u, v in zip(x, y, strict=True)):
                return False
        elif not _same_value(x, y):
            return False
    return True


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x.shape == y.shape and bool(torch.equal(x, y))
    return x is y or x == y


def _batches(inputs: list[torch.Tensor], kwargs_list: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of at most BATCH consecutive windows with equal shapes and arguments (they run batched)."""
    spans, i = [], 0
    while i < len(inputs):
        j = i + 1
        while (j < len(inputs) and j - i < BATCH and inputs[j].shape == inputs[i].shape
               and _same_kwargs(kwargs_list[j], kwargs_list[i])):
            j += 1
        spans.append((i, j))
        i = j
    return spans


def _run_block(block: nn.Module, inputs: list[torch.Tensor], kwargs_list: list[dict[str, Any]],
               spans: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The block's outputs for every window, each span of windows in one batched forward.

    Batching matters: quantized modules dequantize once per forward, not once per window, and the
    statistics hooks get one batch per span. A forward stopped by ``_StopForward`` (only observing,
    see :func:`_calibrate_group`) gives no outputs.
    """
    outputs: list[torch.Tensor] = []
    with torch.no_grad():
        for i, j in spans:
            try:
                out = block(torch.cat(inputs[i:j]), **kwargs_list[i])
            except _StopForward:
                continue
            out = out[0] if isinstance(out, tuple | list) else out
            outputs.extend(out.split(inputs[i].shape[0]))
    return outputs


def _sequential_groups(block: nn.Module, names: dict[str, str], inputs: list[torch.Tensor],
                       kwargs_list: list[dict[str, Any]]) -> list[list[str]]:
    """Targeted linears grouped in execution order; linears reading the same input share a group."""
    order: list[tuple[str, int]] = []
    handles = []
    for local, full in names.items():
        def record(_m: nn.Module, args: tuple, _full: str = full) -> None:
            if all(n != _full for n, _ in order):
                order.append((_full, args[0].data_ptr()))
        handles.append(get_module(block, local).register_forward_pre_hook(record))
    try:
        _run_block(block, inputs[:1], kwargs_list[:1], [(0, 1)])
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last_ptr = None
    for full, ptr in order:
        if groups and ptr == last_ptr:
            groups[-1].append(full)
        else:
            groups.append([full])
        last_ptr = ptr
    unseen = [full for full in names.values() if all(full != n for n, _ in order)]
    if unseen:
        raise QcoreError(f"linears {', '.join(unseen)} never ran during calibration; leave them out with modules_to_not_convert")
    return groups


def calibrate(
    model: nn.Module,
    config: QuantizationConfig,
    calibration: CalibrationData | None,
    tokenizer: Any = None,
    *,
    nsamples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> nn.Module:
    """Quantize ``model`` in place block by block from calibration data (called by ``qcore.quantize``).

    Everything that can be checked is checked before the first block runs: the data, the
    window sizes, modules outside the decoder blocks, the plugin's validate_environment
    (shapes, packability) and non-finite weights. Where the time went: :func:`last_profile`.
    """
    _profile.clear()
    _open_phases.clear()
    start = time.perf_counter()
    try:
        with phase("other"):
            return _calibrate(model, config, calibration, tokenizer, nsamples, seqlen, seed, device, progress)
    finally:
        _profile["total"] = time.perf_counter() - start


def _calibrate(model: nn.Module, config: QuantizationConfig, calibration: CalibrationData | None, tokenizer: Any,
               nsamples: int, seqlen: int, seed: int, device: torch.device | str | None, progress: bool) -> nn.Module:
    from tqdm.auto import tqdm

    from qcore.quantization import check_finite, mark_quantized

    if calibration is None:
        raise CalibrationError(f"method {config.quant_method!r} needs calibration data: pass calibration= (texts or a file)")
    for what, value in (("nsamples", nsamples), ("seqlen", seqlen)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CalibrationError(f"{what} must be a positive integer, got {value!r}")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    modules = select_modules(model, config)
    blocks_name, blocks = find_blocks(model)
    outside_blocks = sorted(n for n in modules if not n.startswith(blocks_name + "."))
    if outside_blocks:
        raise CalibrationError(
            f"modules {', '.join(outside_blocks[:5])} are outside the decoder blocks ({blocks_name}); calibration "
            f"covers blocks only: leave them in float with modules_to_not_convert"
        )
    dtype = compute_dtype(config, device)
    if any(hasattr(m, "_hf_hook") for m in blocks.modules()):
        dtype = None  # accelerate's offload hooks belong to the block itself: run it as it is
    propagate = type(config).next_block_inputs
    if propagate not in ("quantized", "float"):
        raise QcoreError(f"{type(config).__name__}.next_block_inputs is {propagate!r}; a plugin sets 'quantized' or 'float'")
    hooks = registry().hook(config)
    hooks.validate_environment(config=config, device_map=device, model=model, modules=modules)
    for name in modules:
        check_finite(name, dict(get_module(model, name).named_parameters(recurse=False)))
    windows = calibration_windows(calibration, tokenizer, nsamples, seqlen, seed)
    # everything but the blocks (embeddings, rotary tables) runs on the device for the capture
    inside = {id(m) for block in blocks for m in block.modules()}
    outside = [m for m in model.modules() if not list(m.children()) and id(m) not in inside]
    for m in outside:
        m.to(device)
    blocks[0].to(device)
    try:
        with phase("capture"):
            inputs, kwargs_list = _capture_first_block_inputs(model, blocks[0], windows, device)
    finally:
        blocks[0].to(home)
    if dtype is not None:
        inputs = [x.to(dtype) for x in inputs]
        kwargs_list = [_cast_floats(kwargs, dtype) for kwargs in kwargs_list]
    spans = _batches(inputs, kwargs_list)
    bar = tqdm(total=len(blocks), desc=f"{config.quant_method} calibration", unit="block", disable=not progress)
    done = 0
    known_orders: dict[tuple[type, frozenset[str]], list[list[str]]] = {}
    for index, block in enumerate(blocks):
        block.to(device)
        prefix = f"{blocks_name}.{index}."
        names = {n[len(prefix):]: n for n in modules if n.startswith(prefix)}
        # the block that runs: the block itself, or a copy in the compute dtype (the float weights stay for the solver)
        work = block if dtype is None else copy.deepcopy(block).to(dtype)
        if getattr(config, "true_sequential", False):
            # blocks of one class with the same targeted linears run them in the same order: find it once
            shape = (type(block), frozenset(names))
            if shape not in known_orders:
                known_orders[shape] = [[n[len(prefix):] for n in group]
                                       for group in _sequential_groups(work, names, inputs, kwargs_list)]
            groups = [[prefix + local for local in group] for group in known_orders[shape]]
        else:
            groups = [list(names.values())]
        float_outputs = None
        if propagate == "float":
            with phase("outputs"):
                float_outputs = _run_block(work, inputs, kwargs_list, spans)
        for group in groups:
            _calibrate_group(model, work, prefix, group, modules, inputs, kwargs_list, spans, hooks, dtype)
            done += len(group)
            bar.set_postfix_str(f"{done}/{len(modules)} linears")
        with phase("outputs"):
            inputs = _run_block(work, inputs, kwargs_list, spans) if float_outputs is None else float_outputs
        del work
        block.to(home)
        bar.update(1)
    bar.close()
    for m in outside:
        m.to(home)
    hooks.process_after_weight_loading(model=model, config=config)
    return mark_quantized(model, config, modules)


def _calibrate_group(model: nn.Module, work: nn.Module, prefix: str, group: list[str],
                     modules: dict[str, QuantizationConfig], inputs: list[torch.Tensor],
                     kwargs_list: list[dict[str, Any]], spans: list[tuple[int, int]], hooks: Any,
                     dtype: torch.dtype | None) -> None:
    """Observe one group's linears over every batch (in ``work``, the block that runs), quantize them, swap
    the quantized modules into the model and, when ``work`` is a compute copy, their dequantized weights into it."""
    states: dict[str, Any] = {}
    handles = []
    seen: set[str] = set()
    # the rest of the block is not needed once every linear of the group has seen this batch (saves
    # about 40% of calibration forwards); not with accelerate's hooks, whose post-forward must run
    can_stop = EARLY_STOP and not any(hasattr(m, "_hf_hook") for m in work.modules())
    for full in group:
        module = get_module(model, full)
        states[full] = hooks.calibration_init(module_name=full, module=module, config=modules[full], model=model,
                                              modules=modules)

        def observe(_mod: nn.Module, args: tuple, output: torch.Tensor, _full: str = full, _float: nn.Module = module) -> None:
            with phase("add_batch"):
                hooks.calibration_add_batch(module_name=_full, module=_float, state=states[_full],
                                            inputs=args[0].detach(), output=output.detach(), config=modules[_full])
            seen.add(_full)
            if can_stop and len(seen) == len(group):
                raise _StopForward

        handles.append(get_module(work, full[len(prefix):]).register_forward_hook(observe))
    handles.append(work.register_forward_pre_hook(lambda *_: seen.clear()))  # each batch starts afresh
    try:
        with phase("forward"):
            _run_block(work, inputs, kwargs_list, spans)
    finally:
        for h in handles:
            h.remove()
    for full in group:
        with phase("quantize"):
            new = hooks.quantize_calibrated(module_name=full, module=get_module(model, full), state=states.pop(full),
                                            config=modules[full])
        if new is None:
            raise QcoreError(f"no plugin quantized {full!r} (quantize_calibrated returned None)")
        replace_module(model, full, new)
        if dtype is not None:
            with phase("other"):
                twin = hooks.dequantize(module_name=full, module=new, config=modules[full])
            device = next(get_module(work, full[len(prefix):]).parameters()).device
            replace_module(work, full[len(prefix):], new if twin is None else twin.to(device=device, dtype=dtype))
