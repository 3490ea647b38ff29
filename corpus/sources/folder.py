"""A local folder (recursive) or a single file; archives inside are read as containers.

Symlinks are followed by default with loop detection; broken links, loops, FIFOs and other
non-regular files are recorded as skipped. Dot-files and dot-folders (.git, .DS_Store) are
ignored. A file's fingerprint is its size and mtime, so unchanged files are never re-read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from corpus.sources.archives import is_archive, scan_archive
from corpus.sources.base import (
    Container,
    Entry,
    Item,
    Known,
    Skip,
    SourceBase,
    Unchanged,
    is_unchanged,
    read_limited,
)


def stat_fingerprint(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass
class _FileReader:
    path: Path
    max_bytes: int

    def __call__(self) -> bytes:
        with self.path.open("rb") as handle:
            return read_limited(handle.read, self.max_bytes, str(self.path))


class FolderSource(SourceBase):
    def __init__(
        self, root: Path, *, max_bytes: int, follow_symlinks: bool, read_archives: bool
    ) -> None:
        root = root.expanduser().absolute()
        super().__init__(name=f"folder:{root}", kind="folder", uri=str(root))
        self.root = root
        self.max_bytes = max_bytes
        self.follow_symlinks = follow_symlinks
        self.read_archives = read_archives

    def scan(self, known: Mapping[str, Known]) -> Iterator[Entry]:
        if not self.root.exists():
            raise FileNotFoundError(f"source folder or file not found: {self.root}")
        if self.root.is_file():
            yield from self._file(self.root, self.root.name, known)
            return
        top = self.root.stat()
        yield from self._walk(self.root, "", known, ((top.st_dev, top.st_ino),))

    def _walk(
        self,
        folder: Path,
        prefix: str,
        known: Mapping[str, Known],
        ancestors: tuple[tuple[int, int], ...],
    ) -> Iterator[Entry]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield Skip(prefix or ".", "unreadable", f"cannot list folder: {exc.strerror}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            locator = f"{prefix}{entry.name}"
            path = Path(entry.path)
            is_link = entry.is_symlink()
            # Links and special files get a fingerprint too, so unchanged ones are skipped.
            link_fp = f"link:{_readlink(path)}" if is_link else None
            try:
                if is_link and not self.follow_symlinks:
                    yield Skip(locator, "symlink_not_followed", _readlink(path), link_fp)
                    continue
                st = path.stat()  # follows links
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    yield Skip(locator, "symlink_loop", "symlink chain loops", link_fp)
                elif is_link and exc.errno == errno.ENOENT:
                    yield Skip(locator, "broken_symlink", f"-> {_readlink(path)}", link_fp)
                else:
                    yield Skip(locator, "unreadable", exc.strerror or str(exc), link_fp)
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    yield Skip(locator, "symlink_loop", f"-> {_readlink(path)}", link_fp)
                    continue
                yield from self._walk(path, f"{locator}/", known, (*ancestors, key))
            elif stat.S_ISREG(st.st_mode):
                yield from self._file(path, locator, known, st)
            else:
                kind = _file_kind(st.st_mode)
                yield Skip(locator, "not_a_regular_file", kind, stat_fingerprint(st))

    def _file(
        self,
        path: Path,
        locator: str,
        known: Mapping[str, Known],
        st: os.stat_result | None = None,
    ) -> Iterator[Entry]:
        st = st or path.stat()
        fingerprint = stat_fingerprint(st)
        if self.read_archives and is_archive(path):
            if is_unchanged(known, locator, fingerprint):
                yield Unchanged(locator)
                return
            if (yield from scan_archive(path, locator, known, self.max_bytes, fingerprint)):
                yield Container(locator, fingerprint)
            return
        if st.st_size > self.max_bytes:
            yield Skip(locator, "file_too_large", f"{st.st_size} bytes", fingerprint)
            return
        yield Item(locator, fingerprint, _FileReader(path, self.max_bytes))


def _readlink(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return "?"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"
