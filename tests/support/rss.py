"""Resident memory of a real process, as the kernel counts it (/proc/<pid>/status)."""

from __future__ import annotations

MIB = 1024 * 1024


def _status(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")  # not Linux


def rss(pid: int | str = "self") -> int:
    """VmRSS in bytes: resident now."""
    return _status(pid, "VmRSS")


def peak(pid: int | str = "self") -> int:
    """VmHWM in bytes: the most resident since the start or `reset_peak`."""
    return _status(pid, "VmHWM")


def reset_peak(pid: int | str = "self") -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")
