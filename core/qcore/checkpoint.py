"""Reading safetensors checkpoints lazily, tensor by tensor, with the headers checked first.

A checkpoint is a directory with ``model.safetensors`` or with
``model.safetensors.index.json`` and its shards (or a single ``.safetensors`` file).
Every shard's header is read and checked before any tensor is: header length,
JSON, dtypes, shapes against byte ranges, ranges inside the file and not
overlapping. Only then are tensors read, one at a time, shard by shard. Nothing
is ever unpickled: ``pytorch_model.bin`` checkpoints are refused with a hint.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qcore.errors import CheckpointError, CorruptCheckpointError, MissingShardError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024  # config.json and the index: far above any real one

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "F8_E8M0": (torch.float8_e8m0fnu, 1),
    "U16": (torch.uint16, 2),
    "U32": (torch.uint32, 4),
    "U64": (torch.uint64, 8),
}
DTYPE_NAMES = {dtype: name for name, (dtype, _) in DTYPES.items()}


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file with a deterministic layout: the same tensors and metadata give the same bytes.

    The safetensors library orders the ``__metadata__`` entries by hash (two writes of the same
    checkpoint differ); here metadata keys are sorted, tensors are laid out by element size (largest
    first, so every tensor starts at a multiple of its element size) then name, and the header is
    padded with spaces to a multiple of 8 bytes, as the library does. Tensors must be on the CPU.
    """
    for name, value in (metadata or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {name!r}: {type(value).__name__}")
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": dict(sorted((metadata or {}).items()))} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors name")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name in order:
            t = tensors[name].detach().contiguous()
            if t.numel():
                fh.write(t.reshape(-1).view(torch.uint8).numpy().data)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its shard file, dtype name, shape and byte range in the data section."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    data_start: int  # file offset of the data section (8 + header length)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _check_regular_file(path: Path, what: str) -> int:
    """The size of ``path``, after checking it is a regular file (symlinks followed); never opens it.

    A FIFO would block the reader forever and a directory cannot be read: both are refused
    before any open(). A symlink whose target is gone is named as such.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise MissingShardError(f"{what} {path} is a symlink to {os.readlink(path)!r}, which does not exist; "
                                    "re-download the checkpoint") from None
        raise MissingShardError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"{what} {path} cannot be read: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise CheckpointError(f"{what} {path} is {kind}; expected a regular file")
    return st.st_size


def parse_json(raw: bytes, where: str) -> Any:
    """JSON from bytes; any malformed, non-UTF-8 or absurdly nested input is a CorruptCheckpointError."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"{where} is not valid JSON ({exc})") from exc
    except RecursionError:
        raise CorruptCheckpointError(f"{where} is JSON nested too deeply to be a checkpoint file") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check one safetensors file's header; returns (tensors, metadata)."""
    hint = "the file is damaged; re-download or re-save the checkpoint"
    size = _check_regular_file(path, "shard")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptCheckpointError(f"{path}: truncated, only {size} bytes (no safetensors header); {hint}")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise CorruptCheckpointError(
                f"{path}: header claims {length} bytes, more than qcore's limit of {MAX_HEADER_BYTES} "
                f"(a real header is a few MB at most): not a safetensors file; {hint}"
            )
        if 8 + length > size:
            raise CorruptCheckpointError(
                f"{path}: header claims {length} bytes but the file has {size}: truncated or not safetensors; {hint}"
            )
        raw = fh.read(length)
    header = parse_json(raw, f"{path}: header")
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: header is not a JSON object; {hint}")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptCheckpointError(f"{path}: '__metadata__' must map strings to strings; {hint}")
    data_size = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise CorruptCheckpointError(f"{path}: header entry for tensor {name!r} is not an object; {hint}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}; {hint}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has a bad shape {shape!r} (a list of sizes); {hint}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)) \
                or offsets[0] > offsets[1]:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has bad data_offsets {offsets!r}; {hint}")
        shape, (begin, end) = tuple(shape), offsets
        expected = math.prod(shape) * DTYPES[dtype][1]
        if end - begin != expected:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} of shape {list(shape)} {dtype} needs {expected} bytes but its offsets "
                f"span {end - begin}; {hint}"
            )
        if end > data_size:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} ends at byte {end} of a {data_size}-byte data section: the file is "
                f"truncated; {hint}"
            )
        tensors[name] = TensorInfo(name, path, dtype, shape, begin, end, 8 + length)
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise CorruptCheckpointError(f"{path}: tensors {name_a!r} and {name_b!r} overlap; {hint}")
    return tensors, metadata


def _is_plain_file_name(name: Any) -> bool:
    """A shard name from an index: a non-empty file name with no directory part (no '..', no '/')."""
    return (
        isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
        and "\0" not in name and os.path.basename(name) == name
    )


class Checkpoint:
    """A safetensors checkpoint on disk: checked headers, config.json, lazy tensor reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists() and not self.path.is_symlink():
            raise CheckpointError(f"checkpoint {self.path} does not exist")
        self.directory = self.path if self.path.is_dir() else self.path.parent
        self.shards = self._find_shards()
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        for shard in self.shards:
            tensors, metadata = read_header(shard)
            for name in tensors:
                if name in self.tensors:
                    raise CorruptCheckpointError(f"tensor {name!r} appears in both {self.tensors[name].file.name} and {shard.name}")
            self.tensors.update(tensors)
            self.metadata.update(metadata)
        if self._index is not None:
            for name, shard_name in self._index.items():
                info = self.tensors.get(name)
                if info is None or info.file.name != shard_name:
                    raise CorruptCheckpointError(
                        f"{INDEX_NAME} puts tensor {name!r} in {shard_name}, but that shard does not hold it; "
                        "the index and shards come from different saves"
                    )
        self.config = self._read_json("config.json")

    def _find_shards(self) -> list[Path]:
        self._index: dict[str, str] | None = None
        if not self.path.is_dir():
            if self.path.suffix != ".safetensors":
                raise CheckpointError(f"{self.path} is not a .safetensors file; qcore never unpickles .bin/.pt files")
            return [self.path]
        index_path = self.directory / INDEX_NAME
        if index_path.exists():
            index = self._read_json(INDEX_NAME)
            weight_map = (index or {}).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CorruptCheckpointError(f"{index_path} has no 'weight_map' object")
            for tensor, shard in weight_map.items():
                if not _is_plain_file_name(shard):
                    raise CorruptCheckpointError(
                        f"{index_path} maps tensor {tensor!r} to {shard!r}: a shard must be a file name inside "
                        f"{self.directory} (no paths); the index is damaged or hostile"
                    )
            self._index = weight_map
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (self.directory / n).exists() and not (self.directory / n).is_symlink()]
            if missing:
                raise MissingShardError(
                    f"{index_path} lists shard(s) {', '.join(missing)} that are not in {self.directory}; "
                    "copy the missing files (or re-save the checkpoint)"
                )
            return [self.directory / n for n in names]
        if (self.directory / SINGLE_NAME).exists():
            return [self.directory / SINGLE_NAME]
        found = sorted(self.directory.glob("*.safetensors"))
        if found:
            return found
        from qcore.plugins import PICKLE_HINTS

        pickled = sorted(p.name for p in self.directory.glob("*.bin")) + sorted(p.name for p in self.directory.glob("*.pt"))
        how = next((PICKLE_HINTS[name] for name in pickled if name in PICKLE_HINTS),
                   "e.g. transformers' save_pretrained(safe_serialization=True)")
        extra = f" It has {', '.join(pickled)}: qcore never unpickles; convert it to safetensors first ({how})." if pickled else ""
        raise CheckpointError(f"no safetensors file in {self.directory}.{extra}")

    def _read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON object file of the checkpoint (None when absent), size-capped and checked to be an object."""
        path = self.directory / name
        if not path.exists() and not path.is_symlink():
            return None
        size = _check_regular_file(path, name)
        if size > MAX_JSON_BYTES:
            raise CorruptCheckpointError(
                f"{path} is {size} bytes, over qcore's {MAX_JSON_BYTES}-byte limit for {name}; it is not a real {name}"
            )
        data = parse_json(path.read_bytes(), str(path))
        if not isinstance(data, dict):
            raise CorruptCheckpointError(f"{path} must hold a JSON object, not {type(data).__name__}")
        return data

    @property
    def quantization_config(self) -> dict[str, Any] | None:
        qc = (self.config or {}).get("quantization_config")
        if qc is not None and not isinstance(qc, dict):
            raise CorruptCheckpointError(
                f"{self.directory / 'config.json'}: quantization_config must be an object, not {type(qc).__name__}"
            )
        return qc

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor into a fresh CPU tensor (one read, no memory map kept alive)."""
        info = self.tensors[name]
        out = torch.empty(info.nbytes, dtype=torch.uint8)
        with open(info.file, "rb") as fh:
            fh.seek(info.data_start + info.begin)
            got = fh.readinto(memoryview(out.numpy())) if info.nbytes else 0
        if got != info.nbytes:
            raise CorruptCheckpointError(f"{info.file}: tensor {name!r} is cut short (file changed while reading?)")
        return out.view(info.torch_dtype).reshape(info.shape)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor, shard by shard, in file order; one tensor in memory at a time."""
        for shard in self.shards:
            for info in sorted((t for t in self.tensors.values() if t.file == shard), key=lambda t: t.begin):
                yield info.name, self.read(info.name)

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
