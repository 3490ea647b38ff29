"""Peak memory of `spritesafe ingest` over hostile archives: many members of ~32 MB each.

Target (issue 14): peak RSS <= 500 MB whatever the archive. Members are read against a byte
budget per batch (`ingest.batch_bytes`), so the figure should not grow with the member count.

    .venv/bin/python -m bench.archive_memory [--members 64,1000] [--kind zip,tar.gz]

Each archive holds N members of 32 MB - 5 bytes (distinct: a counter, then zeros; they
compress to ~32 KB each) plus one member over max_bytes, refused from its declared size. The
CLI runs under /usr/bin/time -v; its peak RSS (the process or its largest child) is printed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from bench.common import cpu, machine, write_figures

OUT = Path(__file__).resolve().parent / "out" / "archive_memory.json"
LIMIT_MB = 500
MEMBER = 32 * 2**20 - 5


def write_archive(path: Path, members: int) -> None:
    zeros = bytes(MEMBER - 4)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
            for n in range(members):
                out.writestr(f"m{n:05d}.png", n.to_bytes(4, "big") + zeros)
            out.writestr("too-big.png", bytes(32 * 2**20 + 1))
        return
    with tarfile.open(path, "w:gz", compresslevel=1) as out:
        for n in range(members):
            data = n.to_bytes(4, "big") + zeros
            info = tarfile.TarInfo(f"m{n:05d}.png")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("too-big.png")
        info.size = 32 * 2**20 + 1
        out.addfile(info, io.BytesIO(bytes(info.size)))


def measure(archive: Path, data: Path) -> dict[str, Any]:
    spritesafe = str(Path(sys.executable).with_name("spritesafe"))
    env = os.environ | {"SPRITESAFE_DATA_DIR": str(data)}
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-v", spritesafe, "ingest", str(archive), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    kbytes = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    report = json.loads(done.stdout) if done.returncode == 0 else {}
    return {
        "returncode": done.returncode,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(int(kbytes.group(1)) / 1024, 1) if kbytes else None,
        "processed": report.get("processed"),
        "rejected": report.get("rejected"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", default="64,1000")
    parser.add_argument("--kind", default="zip,tar.gz")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = machine() | {"cpu": cpu(), "runs": []}
    failures = []
    print(f"machine: {figures['cpu']}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kind.split(","):
            for members in (int(m) for m in args.members.split(",")):
                archive = Path(tmp) / f"hostile-{members}.{kind}"
                write_archive(archive, members)
                run = measure(archive, Path(tmp) / f"data-{kind}-{members}")
                run |= {
                    "kind": kind,
                    "members": members,
                    "archive_mb": archive.stat().st_size / 2**20,
                }
                archive.unlink()
                figures["runs"].append(run)
                print(
                    f"{kind}, {members:,} members of 32 MB ({run['archive_mb']:.1f} MB archive, "
                    f"{members * MEMBER / 2**30:.1f} GB inside): peak RSS "
                    f"{run['peak_rss_mb']} MB, {run['seconds']} s, rejected {run['rejected']}"
                )
                if run["returncode"] != 0 or run["processed"] != members + 1:
                    failures.append(f"{kind} x {members}: ingest did not finish as expected")
                elif run["peak_rss_mb"] is None or run["peak_rss_mb"] > LIMIT_MB:
                    failures.append(f"{kind} x {members}: {run['peak_rss_mb']} MB > {LIMIT_MB}")
    return write_figures(figures, OUT, failures)


if __name__ == "__main__":
    sys.exit(main())
