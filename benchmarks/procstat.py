"""Process measurements shared by the benchmarks and the memory test."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of a command, from its own /proc/PID/status VmHWM, polled until it exits.
    (wait4's ru_maxrss is no good here: Linux carries the forking parent's high-water mark
    across exec, so a child of a big process reports the parent's size.)"""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, peak = Path(f"/proc/{proc.pid}/status"), 0
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd} failed with exit code {proc.returncode}")
    return peak / 1024
