"""What the benchmarks ran on, for their reports."""

from __future__ import annotations

import os
import platform


def describe(*packages: str, shared: bool = False) -> str:
    """CPU model, cores, kernel, Python and the versions of `packages`."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for name in packages:
        module = __import__(name)
        versions.append(f"{name} {module.__version__}")
    cores = f"{os.cpu_count()} cores" + (" (shared with other jobs)" if shared else "")
    parts = [cpu, cores, f"Linux {platform.release()}", f"Python {platform.python_version()}"]
    return ", ".join(parts + versions)
