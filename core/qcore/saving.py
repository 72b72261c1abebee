"""save_quantized: sharded safetensors + index + config.json, written atomically.

Everything is written into a temporary directory beside the target
(``.<name>.tmp-<pid>-<random>``), fsynced, then moved into place in one step:

- a new target: ``renameat2(RENAME_NOREPLACE)``, so of two concurrent saves to one
  path exactly one wins and the other gets TargetExistsError;
- ``overwrite=True`` over an existing checkpoint: ``renameat2(RENAME_EXCHANGE)`` swaps
  the two directories atomically, then the old one (now in the temporary name) is
  removed. A crash at any moment leaves either the old or the new checkpoint at the
  target, never neither.

Without renameat2 (not Linux, or a filesystem that lacks it) the fallback is
``os.rename``, which refuses a non-empty existing directory, and for an overwrite
two renames (old aside, new in) with a short window in which the target is absent.
A SIGTERM during a save removes the temporary directory; leftovers of a killed
process (SIGKILL, power loss) are removed by the next save to the same target.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcore.checkpoint import INDEX_NAME, SINGLE_NAME, write_safetensors
from qcore.errors import ConfigError, QcoreError, TargetExistsError
from qcore.modules import get_module
from qcore.plugins import registry

_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "5GB" or "500MiB"."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", size.upper()) if isinstance(size, str) else None
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"cannot read max_shard_size {size!r}; use a positive number of bytes or e.g. '5GB', '500MiB'")
    return max(1, int(float(match.group(1)) * _SIZE_UNITS[match.group(2)]))


def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint: quantized modules as their plugin names them, the rest as is.

    Tensors that share storage (tied embeddings) are written once, under the first name.
    """
    config = getattr(model, "qcore_config", None)
    modules: dict[str, Any] = getattr(model, "qcore_modules", {}) or {}
    hooks = registry().hook(config) if config is not None else None
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        if not any(name.startswith(m + ".") for m in modules):
            state[name] = tensor
    for module_name, module_config in modules.items():
        module = get_module(model, module_name)
        tensors = hooks.module_state_dict(module_name=module_name, module=module, config=module_config)
        if tensors is None:
            tensors = module.state_dict()
        for rel, tensor in tensors.items():
            state[f"{module_name}.{rel}"] = tensor
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    deduped: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            raise QcoreError(f"tensor {name!r} is on the meta device (never loaded); cannot save")
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key[0] and key in seen:
            continue
        seen[key] = name
        deduped[name] = tensor
    return deduped


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_quantized(
    model: nn.Module,
    path: str | Path,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool | str = False,
    tokenizer: Any = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint that qcore, transformers and vLLM read.

    :param model: a model returned by load_quantized or quantize.
    :param path: the target directory.
    :param max_shard_size: bytes per shard (int, or "5GB"/"500MiB").
    :param overwrite: False: an existing target is an error (TargetExistsError), also when another
        process creates it during the save. True: an existing *checkpoint* (empty directory, or one
        holding safetensors weights) is replaced atomically; a directory with other files, or a file,
        is refused. ``"force"``: replace whatever directory is there.
    :param tokenizer: saved beside the weights when given (``save_pretrained``).
    :param config: the model's config.json dict, for models without an HF ``config`` attribute.
    :returns: the target path.
    """
    target = Path(path)
    if overwrite not in (False, True, "force"):
        raise ConfigError(f"overwrite must be False, True or 'force', got {overwrite!r}")
    max_bytes = parse_size(max_shard_size)
    check_target(target, overwrite, getattr(model, "qcore_source", None))
    qconfig = getattr(model, "qcore_config", None)
    state = quantized_state_dict(model)
    file_metadata = _file_metadata(model, qconfig, state)
    shards = _shards(state, max_bytes)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp)  # the permissions any new directory gets (umask), unlike mkdtemp's 0700
    try:
        with _cleanup_on_sigterm():
            weight_map: dict[str, str] = {}
            for i, shard in enumerate(shards, start=1):
                file_name = SINGLE_NAME if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                tensors = {k: v.detach().to("cpu").contiguous() for k, v in shard.items()}
                write_safetensors(tmp / file_name, tensors, file_metadata)
                weight_map.update(dict.fromkeys(shard, file_name))
                _step("shard-written")
            if len(shards) > 1:
                total = sum(t.numel() * t.element_size() for t in state.values())
                index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
                (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
            config_dict = _config_dict(model, config)
            if qconfig is not None:
                config_dict["quantization_config"] = qconfig.to_dict()
            (tmp / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
            generation_config = getattr(model, "generation_config", None)
            if generation_config is not None and hasattr(generation_config, "to_json_file"):
                generation_config.to_json_file(tmp / "generation_config.json")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            _fsync_tree(tmp)
            _step("before-rename")
            _move_into_place(tmp, target, overwrite)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, _Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # the default handler is back: end as SIGTERM asks
        raise
    return target


def _file_metadata(model: nn.Module, qconfig: Any, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{"format": "pt"}`` plus what the method's plugin adds (checkpoint_metadata), checked to be strings."""
    extra = registry().hook(qconfig).checkpoint_metadata(model=model, config=qconfig, tensors=state) if qconfig else None
    extra = extra or {}
    if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise QcoreError(f"the {qconfig.quant_method!r} plugin's checkpoint_metadata must return str -> str, got {extra!r}")
    return {"format": "pt", **extra}


def _step(name: str) -> None:
    """A named point of the save, between which a crash is survivable (tests kill the process here)."""


def looks_like_checkpoint(path: Path) -> bool:
    """An empty directory or one holding safetensors weights: what overwrite=True may replace."""
    if not path.is_dir() or path.is_symlink():
        return False
    entries = list(path.iterdir())
    return not entries or any(e.name in (SINGLE_NAME, INDEX_NAME) or e.suffix == ".safetensors" for e in entries)


def check_target(target: Path, overwrite: bool | str, source: str | Path | None = None) -> None:
    """Refuse, before any work, a target that may not be written (save_quantized and ``qcore quantize`` both ask).

    :param source: the checkpoint the model was loaded from; saving over it is refused.
    """
    if source is not None and target.exists() and target.resolve() == Path(source).resolve():
        raise TargetExistsError(
            f"{target} is the source checkpoint this model was loaded from; save to another directory "
            "(replacing the source would lose it if anything goes wrong)"
        )
    _check_replaceable(target, overwrite)


def _check_replaceable(target: Path, overwrite: bool | str) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise TargetExistsError(f"{target} already exists; choose another path or pass overwrite=True (CLI: --overwrite)")
    if target.is_symlink() or not target.is_dir():
        raise TargetExistsError(f"{target} exists and is not a directory; qcore replaces only checkpoint directories")
    if overwrite != "force" and not looks_like_checkpoint(target):
        shown = ", ".join(sorted(e.name for e in target.iterdir())[:5])
        raise TargetExistsError(
            f"{target} holds files that are not a checkpoint ({shown}); overwrite=True replaces only checkpoint "
            "directories. Choose another path, or pass overwrite='force' (CLI: --force) to replace it anyway"
        )


# --- atomic directory moves ---------------------------------------------------------
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2); False when this system has no renameat2 (the caller falls back), OSError on failure."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _move_into_place(tmp: Path, target: Path, overwrite: bool | str) -> None:
    try:
        moved = _renameat2(tmp, target, _RENAME_NOREPLACE)
    except FileExistsError:
        moved = None  # the target appeared (another save won the race, or it existed)
    if moved is False:  # fallback: rename refuses a non-empty directory, replaces an empty one
        if not (target.exists() or target.is_symlink()):
            try:
                os.rename(tmp, target)
                moved = True
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                moved = None
    if moved:
        _fsync_dir(target.parent)
        return
    if not overwrite:
        raise TargetExistsError(f"{target} was created by someone else during this save; nothing was replaced")
    _check_replaceable(target, overwrite)  # what appeared meanwhile may not be a checkpoint
    try:
        exchanged = _renameat2(tmp, target, _RENAME_EXCHANGE)
    except FileNotFoundError:  # the target vanished meanwhile
        exchanged = _renameat2(tmp, target, _RENAME_NOREPLACE)
    if not exchanged:
        old = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        tmp = old
    _fsync_dir(target.parent)
    _step("after-exchange")
    shutil.rmtree(tmp, ignore_errors=True)  # now the old checkpoint


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and the directories themselves, so a rename never exposes unwritten data."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(target: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.old-*`` directories left by saves whose process is gone."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)(?:-[0-9a-f]+)?")
    for entry in target.parent.glob(f".{target.name}.*"):
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


class _Terminated(BaseException):
    """SIGTERM arrived during a save: unwind so the temporary directory is removed, then die of SIGTERM."""


@contextmanager
def _cleanup_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into an exception while saving (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def raise_terminated(signum: int, frame: Any) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise
    finally:
        if signal.getsignal(signal.SIGTERM) is raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _config_dict(model: nn.Module, config: dict[str, Any] | None) -> dict[str, Any]:
    if config is not None:
        return dict(config)
    hf_config = getattr(model, "config", None)
    if hf_config is not None and hasattr(hf_config, "to_dict"):
        data = hf_config.to_dict()
        data.pop("quantization_config", None)
        if not data.get("architectures"):
            data["architectures"] = [type(model).__name__]  # as save_pretrained does
        return data
    return {}
