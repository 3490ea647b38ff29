"""What every benchmark records besides its own figures: the machine and how busy it was."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def cpu() -> str:
    """The CPU's name and the vector extensions that decide CPU speed here."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_bf16") if f in flags]
    return f"{name} ({os.cpu_count()} cores; {', '.join(isa) or 'no AVX2'})"


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its largest child, if larger)."""
    scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, KiB here
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return peak / scale


def report_machine(figures: dict[str, Any], children: bool = False) -> None:
    """Record and print the load average at the end and the peak memory."""
    figures["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(
        f"load average at start {figures['load_average_start']}, at end "
        f"{figures['load_average_end']} (others' work on this machine skews the timings)"
    )
    figures["peak_rss_mb"] = round(peak_rss_mb(children), 1)
    which = " (largest process)" if children else ""
    print(f"peak RSS{which}: {figures['peak_rss_mb']:,.1f} MB")


def write_figures(figures: dict[str, Any], path: Path, failures: list[str]) -> int:
    """Write the figures as JSON, report failed checks; the process exit status."""
    figures["failures"] = failures
    for failure in failures:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {path}")
    return 1 if failures else 0


def copy_catalog(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite catalog file (VACUUM INTO), even while it is in use."""
    import sqlite3

    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("VACUUM INTO ?", (str(target),))
    conn.close()
