"""Reading zip and tar archives safely: members are read in memory, never extracted.

Members whose names would escape (absolute, `..`), links, devices and oversized members are
recorded as skipped with a reason; a corrupt archive is one skip, and the run goes on.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections import Counter
from collections.abc import Generator, Mapping
from pathlib import Path, PurePosixPath

from corpus.sources.base import (
    Entry,
    Item,
    Known,
    Preloaded,
    Skip,
    Unchanged,
    is_unchanged,
    read_limited,
)
from spritesafe.decode import Rejected

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def unsafe_member_name(name: str) -> bool:
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        return True
    return ".." in PurePosixPath(normalized).parts


def _check_member(
    locator: str,
    name: str,
    size: int,
    fingerprint: str,
    known: Mapping[str, Known],
    max_bytes: int,
) -> Entry | None:
    """A Skip or Unchanged for a member that must not be read, else None."""
    if unsafe_member_name(name):
        return Skip(locator, "unsafe_archive_path", name, fingerprint)
    if size > max_bytes:
        return Skip(locator, "file_too_large", f"{size} bytes", fingerprint)
    if is_unchanged(known, locator, fingerprint):
        return Unchanged(locator)
    return None


def _member_locators(prefix: str, names: list[str]) -> list[str]:
    """`prefix!name`, with `#n` appended to repeated names (zip allows duplicates)."""
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        suffix = f"#{seen[name]}" if seen[name] > 1 else ""
        out.append(f"{prefix}!{name}{suffix}")
    return out


Scan = Generator[Entry, None, bool]


def scan_archive(
    path: Path, prefix: str, known: Mapping[str, Known], max_bytes: int, archive_fp: str
) -> Scan:
    """Yield the members; return False when the archive itself is unreadable or corrupt
    (then it was yielded as a Skip and must not be recorded as a finished container)."""
    if path.name.lower().endswith(".zip"):
        return (yield from _scan_zip(path, prefix, known, max_bytes, archive_fp))
    return (yield from _scan_tar(path, prefix, known, max_bytes, archive_fp))


def _scan_zip(
    path: Path, prefix: str, known: Mapping[str, Known], max_bytes: int, archive_fp: str
) -> Scan:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield Skip(prefix, "bad_archive", f"{type(exc).__name__}: {exc}", archive_fp)
        return False
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        for info, locator in zip(
            infos, _member_locators(prefix, [i.filename for i in infos]), strict=True
        ):
            fingerprint = f"{info.file_size}:{info.CRC:08x}"
            verdict = _check_member(
                locator, info.filename, info.file_size, fingerprint, known, max_bytes
            )
            if verdict is not None:
                yield verdict
                continue
            try:
                with archive.open(info) as handle:
                    data = read_limited(handle.read, max_bytes, info.filename)
            except Rejected as rej:
                yield Skip(locator, rej.reason, rej.detail, fingerprint)
                continue
            except (zipfile.BadZipFile, RuntimeError, OSError, ValueError, EOFError) as exc:
                # CRC mismatch, encryption, unsupported compression, truncated data.
                yield Skip(locator, "bad_archive_member", f"{type(exc).__name__}: {exc}")
                continue
            yield Item(locator, fingerprint, Preloaded(data))
    return True


def _scan_tar(
    path: Path, prefix: str, known: Mapping[str, Known], max_bytes: int, archive_fp: str
) -> Scan:
    try:
        archive = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Skip(prefix, "bad_archive", f"{type(exc).__name__}: {exc}", archive_fp)
        return False
    seen: Counter[str] = Counter()
    with archive:
        try:
            for member in archive:
                if member.isdir():
                    continue
                seen[member.name] += 1
                suffix = f"#{seen[member.name]}" if seen[member.name] > 1 else ""
                locator = f"{prefix}!{member.name}{suffix}"
                fingerprint = f"{member.size}:{member.mtime}:{member.chksum}"
                if member.issym() or member.islnk():
                    yield Skip(locator, "archive_link", f"link to {member.linkname}", fingerprint)
                    continue
                if not member.isfile():
                    yield Skip(locator, "not_a_regular_file", "device or fifo in archive")
                    continue
                verdict = _check_member(
                    locator, member.name, member.size, fingerprint, known, max_bytes
                )
                if verdict is not None:
                    yield verdict
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    yield Skip(locator, "not_a_regular_file", member.name)
                    continue
                with handle:
                    data = handle.read(max_bytes + 1)
                yield Item(locator, fingerprint, Preloaded(data))
        except (tarfile.TarError, OSError, EOFError) as exc:
            yield Skip(prefix, "bad_archive", f"truncated or corrupt: {exc}", archive_fp)
            return False
    return True
