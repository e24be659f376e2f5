"""The one reader of weight files: safetensors and torch pickles, safely and with one copy.

- ``.safetensors``: the header is parsed and checked against the file size (a truncated file
  is reported, not half-read); tensors are read with plain file reads into fresh tensors, so
  the process holds exactly one copy (a memory map would add the mapped pages to the RSS).
- torch pickles (``.ckpt``/``.pt``/``.pth``/``.tar``/``.bin``): ``torch.load(weights_only=True)``,
  memory-mapped when the file is in the zip format (so reading a subset touches only that
  subset). When ``weights_only`` refuses the file, the error says how to convert it.

Every problem is a :class:`~caphuman.errors.CapHumanError` naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from caphuman.errors import CapHumanError, MissingWeightsError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# A safetensors header larger than this is not a real header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".tar", ".bin")
# What nn.DataParallel puts before every key; re-saved checkpoints often keep it.
DATA_PARALLEL_PREFIX = "module."


@dataclass(frozen=True)
class TensorInfo:
    """A safetensors header entry: dtype name, shape and byte range within the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    data_start: int
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and check a .safetensors header (8-byte little-endian length, then JSON).

    Raises:
        CapHumanError: not a safetensors file, or its tensors reach past the end (truncated).
    """
    path = Path(path)
    file_size = path.stat().st_size
    try:
        with open(path, "rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            if file_size < 8 or length <= 0 or length > min(_MAX_HEADER_BYTES, file_size - 8):
                raise ValueError("no valid header")
            raw = json.loads(stream.read(length))
    except (ValueError, UnicodeDecodeError) as error:
        raise CapHumanError(f"'{path}' is not a readable safetensors file ({error}).") from None
    metadata = raw.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    data_size = file_size - 8 - length
    for name, info in raw.items():
        try:
            begin, end = (int(offset) for offset in info["data_offsets"])
            tensor = TensorInfo(dtype=str(info["dtype"]), shape=tuple(int(d) for d in info["shape"]), begin=begin, end=end)
        except (KeyError, TypeError, ValueError):
            raise CapHumanError(f"'{path}' has a malformed safetensors header entry '{name}'.") from None
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise CapHumanError(f"'{path}' stores '{name}' as {tensor.dtype}, which is not supported.")
        if tensor.end > data_size or tensor.begin > tensor.end:
            raise CapHumanError(f"'{path}' is truncated or damaged: tensor '{name}' ends at byte {tensor.end} of a {data_size}-byte data section.")
        tensors[name] = tensor
    return SafetensorsHeader(tensors=tensors, data_start=8 + length, metadata=dict(metadata))


def read_safetensors(path: str | os.PathLike, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Read the tensors of a .safetensors file for which ``keep(name)`` is true, one copy each.

    Plain reads into freshly allocated tensors (no memory map): only the kept tensors ever
    occupy process memory.
    """
    path = Path(path)
    header = read_safetensors_header(path)
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as stream:
        for name, info in sorted(header.tensors.items(), key=lambda item: item[1].begin):
            if keep is not None and not keep(name):
                continue
            nbytes = info.end - info.begin
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            stream.seek(header.data_start + info.begin)
            if nbytes and stream.readinto(memoryview(buffer.numpy())) != nbytes:
                raise CapHumanError(f"'{path}' is truncated: could not read tensor '{name}'.")
            tensors[name] = buffer.view(SAFETENSORS_DTYPES[info.dtype]).reshape(info.shape)
    return tensors


def conversion_hint(path: Path) -> str:
    """How to turn a pickle that weights_only refuses into safetensors (only for trusted files)."""
    target = path.with_suffix(".safetensors")
    return (
        'if you trust this file, convert it once to safetensors: python -c "import torch, safetensors.torch as st; '
        f"sd = torch.load('{path}', map_location='cpu', weights_only=False); sd = sd.get('state_dict', sd); "
        f"st.save_file({{k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, '{target}')\" "
        "and point the config at the .safetensors file"
    )


class UnreadableTorchFileError(CapHumanError):
    """:func:`read_torch_file` could not read a file; ``cause`` is torch's own exception (a
    ``pickle.UnpicklingError`` when the file's objects are not plain data), for callers that
    word the problem for their own kind of file."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped when the format allows.

    Raises:
        UnreadableTorchFileError: unreadable/truncated file, or a pickle that weights_only
            refuses (the message says how to convert it).
    """
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            # Files saved by torch < 1.6 (legacy, non-zip) cannot be memory-mapped.
            if "mmap" not in str(error) and "zip" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        first_line = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(error).__name__
        if "weights_only" in text or "Weights only" in text or "Unsupported global" in text:
            # torch names the refused class on a line "WeightsUnpickler error: Unsupported global: ..."
            refused = next((line.split("error:", 1)[-1].strip() for line in text.splitlines() if "Unsupported global" in line), first_line)
            raise UnreadableTorchFileError(
                f"'{path}' contains Python objects that torch.load(weights_only=True) refuses ({refused.split('. ')[0]}); "
                + conversion_hint(path)
                + ".",
                error,
            ) from None
        raise UnreadableTorchFileError(f"'{path}' is not a readable torch checkpoint ({first_line}).", error) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError) as error:
        reason = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else type(error).__name__
        raise UnreadableTorchFileError(f"'{path}' is not a readable torch checkpoint (truncated or damaged: {reason}).", error) from None


def unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: ``state_dict`` when present, else the top level.

    Non-tensor entries (Lightning's step counters etc.) are dropped.
    """
    while isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise CapHumanError(f"'{path}' holds a {type(loaded).__name__}, not a state dict.")
    tensors = {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not tensors:
        raise CapHumanError(f"'{path}' holds no tensors.")
    return tensors


def read_state_dict(
    path: str | os.PathLike, keep: Callable[[str], bool] | None = None, what: str = "weights", source: str = "checkpoints/README.md"
) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch file whose names pass ``keep`` (default: all).

    Raises:
        MissingWeightsError: no file at ``path``.
        CapHumanError: unreadable, truncated, or refused by weights_only (with a conversion hint).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(what, str(path), source)
    if path.suffix == ".safetensors":
        return read_safetensors(path, keep)
    state = unwrap_state_dict(read_torch_file(path), path)
    return {key: value for key, value in state.items() if keep is None or keep(key)}


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a weights file, without reading tensor data where possible.

    For torch files this also checks the file is at least as large as the tensors it claims
    (a size sanity check: memory-mapped loading would otherwise defer a short read).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return {name: info.shape for name, info in read_safetensors_header(path).tensors.items()}
    state = unwrap_state_dict(read_torch_file(path), path)
    storages = {id(value.untyped_storage()): value.untyped_storage().nbytes() for value in state.values()}
    claimed, actual = sum(storages.values()), path.stat().st_size
    if claimed > actual:
        raise CapHumanError(f"'{path}' is truncated: its tensors need {claimed} bytes but the file has {actual}.")
    return {name: tuple(value.shape) for name, value in state.items()}


def without_data_parallel_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with nn.DataParallel's ``module.`` prefix removed when every key has it."""
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return dict(state)
