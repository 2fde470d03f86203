"""The machine a benchmark ran on, recorded next to every result (figures mean little without it)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def _proc_field(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_info(*packages: str) -> dict[str, str]:
    """Cores, CPU model, RAM, load at start, Python and the versions of ``packages``."""
    mem_kib = _proc_field("/proc/meminfo", "MemTotal")
    info = {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _proc_field("/proc/cpuinfo", "model name") or "unknown",
        "ram": f"{int(mem_kib.split()[0]) / 1024 / 1024:.1f} GiB" if mem_kib else "unknown",
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "python": platform.python_version(),
    }
    for name in packages:
        info[name] = metadata.version(name)
    return info
