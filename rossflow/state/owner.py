"""Who holds a claim: host, process id and that process's start time (so a recycled pid is not
mistaken for the holder). A holder on this host whose process is gone has certainly stopped; a
holder on another host is trusted until its lease expires."""

from __future__ import annotations

import json
import os
import socket

import psutil

HOST = socket.gethostname()


def _process_started(pid: int) -> float | None:
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def current_owner() -> str:
    """This process, as stored in a claim's ``owner`` column."""
    pid = os.getpid()
    return json.dumps({"host": HOST, "pid": pid, "proc_started": _process_started(pid)})


def describe_owner(owner: str) -> str:
    try:
        data = json.loads(owner)
        return f"process {data.get('pid')} on {data.get('host')}"
    except (ValueError, TypeError, AttributeError):
        return owner or "unknown worker"


def owner_gone(owner: str) -> bool:
    """True when ``owner`` ran on this host and its process no longer exists."""
    try:
        data = json.loads(owner)
        host, pid, started = data.get("host"), int(data.get("pid") or 0), data.get("proc_started")
    except (ValueError, TypeError, AttributeError):
        return False
    if host != HOST or not pid:
        return False
    if not psutil.pid_exists(pid):
        return True
    now_started = _process_started(pid)
    return now_started is not None and started is not None and abs(now_started - started) > 1.0
