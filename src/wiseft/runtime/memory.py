"""The memory budget: how much memory this machine has available now."""

from __future__ import annotations

import os


def available_memory() -> int:
    """Bytes of memory available on this machine now (Linux ``MemAvailable``, else the
    free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
