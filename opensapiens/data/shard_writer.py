"""Writing WebDataset-style tar shards: ``NAME.jpg`` (or another image suffix) with an optional ``NAME.json`` beside
it, each shard under its final name only once complete. ``shards.StreamingImages`` reads them."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path


class ShardWriter:
    """Write ``prefix-000000.tar``, ``prefix-000001.tar``, ... with at most ``max_count`` samples or ``max_bytes``
    each. A shard appears under its final name only once complete (hidden temp file + ``os.replace``)."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "shard", max_count: int = 1000,
                 max_bytes: int = 1 << 30, start_index: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.max_bytes = prefix, max_count, max_bytes
        self.index = start_index
        self._tar: tarfile.TarFile | None = None
        self.count = self.bytes = 0

    def shard_name(self, index: int | None = None) -> str:
        return f"{self.prefix}-{self.index if index is None else index:06d}.tar"

    def _tmp(self) -> Path:
        return self.out_dir / f".{self.shard_name()}.tmp"

    def is_full(self, nbytes: int) -> bool:
        """Would a sample of ``nbytes`` go into a new shard?"""
        return self._tar is not None and (self.count >= self.max_count or self.bytes + nbytes > self.max_bytes)

    def write(self, key: str, image: bytes, ext: str, meta: dict | None = None) -> str:
        """Add one sample (starting a new shard when this one is full); returns the name of its shard."""
        if "." in key or "/" in key:
            raise ValueError(f"shard sample key {key!r} must not contain '.' or '/'")
        if self.is_full(len(image)):
            self.close()
        if self._tar is None:
            self._tar = tarfile.open(self._tmp(), "w")  # noqa: SIM115 (open across calls until the shard is full)
        members = [(key + ext, image)]
        if meta is not None:
            members.append((key + ".json", json.dumps(meta, sort_keys=True).encode()))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.bytes += len(image)
        return self.shard_name()

    def close(self) -> str | None:
        """Finish the open shard (if any) and return its name."""
        if self._tar is None:
            return None
        name = self.shard_name()
        self._tar.close()
        os.replace(self._tmp(), self.out_dir / name)
        self._tar = None
        self.index += 1
        self.count = self.bytes = 0
        return name

    def discard(self) -> None:
        """Drop the open shard (after an error)."""
        if self._tar is not None:
            self._tar.close()
            self._tmp().unlink(missing_ok=True)
            self._tar = None
            self.count = self.bytes = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
