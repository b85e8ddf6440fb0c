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


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (a JVM forks from many)."""
    kids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    for task in tasks:
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return kids


def peak_tree_rss_mib(cmd: list[str]) -> tuple[dict[str, float], int, str]:
    """Run ``cmd``, polling the RSS of its whole process tree; returns (peaks in MiB, exit code,
    stdout). Peaks: ``total`` (the largest sum over the tree at one moment) and, each at its own
    peak, ``python`` (the command's own process), ``java`` (JVMs in the tree) and ``workers``
    (the other Python processes, summed: Spark's Python workers)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peaks = {"total": 0.0, "python": 0.0, "java": 0.0, "workers": 0.0}
    out: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        now = {"total": 0.0, "python": 0.0, "java": 0.0, "workers": 0.0}
        todo, seen = [proc.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo += _children(pid)
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
            name = fields.get("Name", "").strip()
            kind = "python" if pid == proc.pid else ("java" if name == "java" else "workers")
            now[kind] += rss
            now["total"] += rss
        for k, v in now.items():
            peaks[k] = max(peaks[k], v)
        time.sleep(0.05)
    reader.join()
    return peaks, proc.wait(), "".join(out)
