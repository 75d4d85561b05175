"""Read tensors out of checkpoint files without executing pickled code.

Supported containers:
  * safetensors;
  * PyTorch zip checkpoints (``torch.save`` >= 1.6): mmengine ``{state_dict, meta, ...}`` dicts, flat ``_clean.pth``
    state dicts, anything that nests a state dict;
  * TorchScript archives (the official "lite" ``*_torchscript.pt2``): the module tree's parameters and buffers;
  * ``torch.export`` archives that hold a ``serialized_state_dict.pt`` (the official ``*_bfloat16.pt2``).

The pickle stream is read by a restricted unpickler: tensors are rebuilt from the archive's raw storages by our own
code, a handful of plain containers are allowed, and every other class reference (``mmengine.ConfigDict``, numpy
scalars, TorchScript module classes, classes that do not exist here...) becomes an inert ``Opaque`` record that only
stores the arguments and state it was given. Nothing named in the file is imported or called.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and what is wrong."""


class Opaque:
    """Stand-in for any class the checkpoint references that we do not allow; keeps what the pickle gave it.

    ``find_class`` returns a subclass per referenced name (NEWOBJ needs a type); instances only record arguments,
    ``__setstate__`` state and appended items.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args, obj.state, obj.items = args, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"Opaque({self.qualname})"


_OPAQUE_TYPES: dict[str, type] = {}


def _opaque_type(qualname: str) -> type:
    if qualname not in _OPAQUE_TYPES:
        _OPAQUE_TYPES[qualname] = type("Opaque", (Opaque,), {"qualname": qualname})
    return _OPAQUE_TYPES[qualname]


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _rebuild_tensor_v3(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, requires_grad: bool,
                       hooks: Any, dtype: torch.dtype, *_: Any) -> torch.Tensor:
    """A tensor of a dtype without a typed storage (float8, uint16/32/64): bytes, and the dtype beside them."""
    typed = storage.view(dtype) if storage.numel() else torch.empty(0, dtype=dtype)
    return torch.as_strided(typed, tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, load_storage):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return _rebuild_tensor_v3
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):  # a dtype, for v3: data only
            return getattr(torch, name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "builtins" and name in ("set", "frozenset", "list", "dict", "tuple"):
            return {"set": set, "frozenset": frozenset, "list": list, "dict": dict, "tuple": tuple}[name]
        if module == "torch" and name == "Size":
            return tuple
        return _opaque_type(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else torch.uint8
        if key not in self._storages:
            raw = self._load_storage(str(key))
            t = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            self._storages[key] = t.view(dtype) if t.numel() else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _unpickle_zip(zf: zipfile.ZipFile, pkl_name: str) -> Any:
    prefix = pkl_name[: -len("data.pkl")]
    names = set(zf.namelist())

    def load_storage(key: str) -> bytes:
        for cand in (f"{prefix}data/{key}", f"{prefix}{key}"):
            if cand in names:
                return zf.read(cand)
        raise CheckpointError(f"storage {key!r} missing from archive")

    return _SafeUnpickler(zf.read(pkl_name), load_storage).load()


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    """Flatten a TorchScript module tree (Opaque records with attribute dicts) into ``name -> tensor``."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, Opaque) and isinstance(obj.state, dict):
        for k, v in obj.state.items():
            if isinstance(k, str) and not k.startswith("_"):
                _collect_tensors(v, f"{prefix}{k}.", out, seen)


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The tensor dict inside a loaded checkpoint: the object itself, or under state_dict/model/module/..."""
    if isinstance(obj, Opaque):  # TorchScript module tree
        out: dict[str, torch.Tensor] = {}
        _collect_tensors(obj, "", out, set())
        return out or None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module", "model_state", "ema_state_dict", "params"):  # a training
            if isinstance(obj.get(key), (dict, Opaque)):  # checkpoint's weights, beside its step / epoch tensors
                found = _find_state_dict(obj[key])
                if found:
                    return found
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return tensors
    return None


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read ``path`` and return (state_dict, metadata). Metadata is the safetensors header metadata; of a zip
    checkpoint, the plain strings at the top of its dict (our training checkpoints' model config); else {}.

    A folder is read as Hugging Face ``save_pretrained`` writes one: its ``model.safetensors``, or the shards that
    ``model.safetensors.index.json`` lists (also given directly)."""
    path = checkpoint_file(path)
    if path.name.endswith(SHARD_INDEX_SUFFIX):
        return _read_sharded(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length that fits the file, then the JSON header's "{"
    header_fits = len(head) == 9 and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8 and \
        head[8:] == b"{"
    if path.suffix == ".safetensors" or (header_fits and not zipfile.is_zipfile(path)):
        return _read_safetensors(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a safetensors file nor a complete zip-format PyTorch checkpoint (a truncated download? "
            "legacy torch<1.6 pickles are not read either, as they cannot be loaded without running pickled code: "
            "re-save those with a current torch.save)")
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_zip(zf, str(path))
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError, TypeError) as e:
        # RuntimeError / TypeError: a tensor record that does not fit its storage (a truncated or altered file)
        raise CheckpointError(f"{path}: corrupt or unsupported checkpoint ({type(e).__name__}: {e})") from e


def _read_zip(zf: zipfile.ZipFile, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata): the string entries of a checkpoint dict are its metadata, as a safetensors header's
    (our training checkpoints keep the model config so, so that they load and convert like exported weights)."""
    names = zf.namelist()
    nested = [n for n in names if n.endswith("serialized_state_dict.pt")]
    if nested:  # torch.export archive: the weights are a torch.save inside the zip
        with zipfile.ZipFile(io.BytesIO(zf.read(nested[0]))) as inner:
            return _read_zip(inner, f"{label}:{nested[0]}")
    pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkls:
        raise CheckpointError(f"{label}: zip archive without a data.pkl; not a PyTorch checkpoint")
    obj = _unpickle_zip(zf, pkls[0])
    sd = _find_state_dict(obj)
    if not sd:
        raise CheckpointError(f"{label}: no tensors found (expected a state dict, an mmengine checkpoint or a "
                              "TorchScript module; a whole module saved with torch.save(model) cannot be read "
                              "without running its pickled code: save model.state_dict() instead)")
    meta = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(obj, dict) else {}
    return sd, meta


def checkpoint_file(path: str | Path) -> Path:
    """``path`` where it is a file, a save_pretrained folder's weights (``model.safetensors``, else its shard
    index); else a CheckpointError that says what it is instead."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "model" + SHARD_INDEX_SUFFIX):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: this is a folder without model.safetensors or model{SHARD_INDEX_SUFFIX} "
                              "(a Hugging Face save); give the checkpoint file in it")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


SHARD_INDEX_SUFFIX = ".safetensors.index.json"


def shard_index(index: Path) -> tuple[dict[str, str], list[str]]:
    """A ``*.safetensors.index.json``'s ``weight_map`` (tensor name -> shard file beside it) and its shard files,
    sorted; a CheckpointError for a malformed index or a shard name that leaves its folder."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        if not all(isinstance(s, str) for s in shards):
            raise TypeError("shard names must be strings")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a shard index (a JSON object with a weight_map): {e!r}") from None
    if bad := [s for s in shards if Path(s).is_absolute() or ".." in Path(s).parts]:
        raise CheckpointError(f"{index}: shard {bad[0]!r} is not a file beside the index")
    return weight_map, shards


def _read_sharded(index: Path, metadata_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of every shard an index lists (``shard_index``), each name found in its shard; metadata: the
    first shard's."""
    weight_map, shards = shard_index(index)
    sd: dict[str, torch.Tensor] = {}
    meta: dict[str, str] | None = None
    for shard in shards:
        file = index.parent / shard
        if not file.is_file():
            raise CheckpointError(f"{index}: its shard {shard} is missing (an interrupted download?)")
        tensors, shard_meta = _read_safetensors(file, metadata_only)
        meta = shard_meta if meta is None else meta
        if metadata_only:
            break
        sd.update(tensors)
    missing = [k for k in weight_map if k not in sd]
    if missing and not metadata_only:
        raise CheckpointError(f"{index}: {len(missing)} tensor(s) it lists are not in their shards, e.g. {missing[0]}")
    return sd, meta or {}


def _read_safetensors(path: Path, metadata_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if metadata_only:
                return {}, meta
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from e


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file (a sharded save's first shard), without reading its tensors."""
    path = checkpoint_file(path)
    if path.name.endswith(SHARD_INDEX_SUFFIX):
        return _read_sharded(path, metadata_only=True)[1]
    return _read_safetensors(path, metadata_only=True)[1]
