"""Content-addressed blob store: original bytes stored once, under their sha256.

A local folder by default; any fsspec URL (s3://, gs://, memory://, ...) by configuration.
Keys are `ab/cd/abcd...` so no folder grows too large.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem


def blob_key(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


class BlobStore:
    def __init__(self, root: str) -> None:
        self.fs, path = fsspec.core.url_to_fs(root)
        self.root = path.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        self._folders: set[str] = set()  # local folders known to exist
        if self._local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def exists(self, key: str) -> bool:
        if self._local:
            return Path(self._path(key)).exists()
        return bool(self.fs.exists(self._path(key)))

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store `data` (idempotent) and return its key."""
        key = blob_key(sha256 or hashlib.sha256(data).hexdigest())
        if self.exists(key):
            return key
        path = self._path(key)
        if self._local:
            # Write then rename: a crash never leaves a partial blob under a valid key.
            folder = path.rsplit("/", 1)[0]
            if folder not in self._folders:
                Path(folder).mkdir(parents=True, exist_ok=True)
                self._folders.add(folder)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as handle:
                handle.write(data)
            Path(tmp).replace(path)
        else:
            self.fs.pipe_file(path, data)
        return key

    def get(self, key: str) -> bytes:
        if self._local:
            return Path(self._path(key)).read_bytes()
        return bytes(self.fs.cat_file(self._path(key)))
