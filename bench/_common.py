"""Shared helpers for the benchmarks: services in subprocesses, measured child runs, tables.

Every service (Rossum sandbox, ERP stand-in, Prefect server) runs in its own subprocess, and so
does every measured variant, so that a variant's peak RSS is its own and nothing else's::

    with start_sandbox() as sandbox, start_erp() as erp:
        sandbox.admin("POST", "seed", {"queue": 1, "count": 1000, "status": "confirmed"})
        run = run_measured([sys.executable, "-m", "bench.x", "--child"], env=child_env())
        print(run.wall_s, run.peak_rss_mb)

Peak RSS comes from two sources: the kernel's high-water mark of the child
(``ru_maxrss`` from ``wait4``, exact) and a psutil sampler (every 50 ms, the child plus its own
children, summed). :attr:`Measured.peak_rss_mb` is the larger of the two.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

SANDBOX_USERNAME = "admin@rossflow.local"
SANDBOX_PASSWORD = "rossflow"


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus ``extra``, with the repo importable and output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (SIGINT for servers that treat it as Ctrl-C), then SIGKILL; by pid only."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout / 2)
            return
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(5)


@dataclass
class Service:
    """A server running in a subprocess; its output goes to a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        _stop_process(self.proc)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_service(
    name: str,
    argv: Sequence[str],
    *,
    url: str,
    health_url: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    log_dir: Path | None = None,
) -> Service:
    """Start ``argv`` and wait until ``health_url`` answers 2xx."""
    log_dir = log_dir or Path(tempfile.gettempdir())
    log_path = log_dir / f"bench-{name}-{os.getpid()}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        list(argv), cwd=ROOT, env=dict(env or child_env()), stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    service = Service(name, proc, url, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{service.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(health_url, timeout=2.0).is_success:
                return service
        if time.monotonic() > deadline:
            service.stop()
            raise TimeoutError(f"{name} not healthy after {timeout:.0f}s:\n{service.log_tail()}")
        time.sleep(0.1)


class SandboxService(Service):
    """The Rossum sandbox (``python -m sandbox.cli``) with admin helpers."""

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    def admin(self, method: str, path: str, json: Any = None, timeout: float = 300.0) -> Any:
        resp = httpx.request(method, f"{self.url}/_sandbox/{path}", json=json, timeout=timeout)
        resp.raise_for_status()
        return resp.json()

    def reset(self) -> None:
        self.admin("POST", "reset")

    def seed(self, count: int, *, queue: int = 1, status: str = "confirmed") -> list[int]:
        body = self.admin("POST", "seed", {"queue": queue, "count": count, "status": status})
        return list(body["ids"])

    def settings(self, **values: Any) -> dict[str, Any]:
        return dict(self.admin("POST", "settings", values))

    def stats(self) -> dict[str, Any]:
        return dict(self.admin("GET", "stats"))

    def reset_stats(self) -> None:
        self.admin("DELETE", "stats")

    def count(self, status: str, queue: int = 1) -> int:
        """Annotations of ``queue`` in ``status`` (an /api call: counted in the stats)."""
        with httpx.Client(base_url=self.api_url, timeout=60) as client:
            token = client.post(
                "/v1/auth/login", json={"username": SANDBOX_USERNAME, "password": SANDBOX_PASSWORD}
            ).json()["key"]
            resp = client.get(
                "/v1/annotations",
                params={"queue": queue, "status": status, "page_size": 1},
                headers={"Authorization": f"Bearer {token}"},
            )
            resp.raise_for_status()
            return int(resp.json()["pagination"]["total"])


def start_sandbox(*, port: int | None = None, log_dir: Path | None = None) -> SandboxService:
    """An in-memory sandbox (``--db :memory:``, so ``reset`` works) on a free port."""
    port = port or free_port()
    base = start_service(
        "sandbox",
        [
            sys.executable,
            "-m",
            "sandbox.cli",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            ":memory:",
        ],
        url=f"http://127.0.0.1:{port}",
        health_url=f"http://127.0.0.1:{port}/_sandbox/health",
        log_dir=log_dir,
    )
    return SandboxService(base.name, base.proc, base.url, base.log_path)


class ErpService(Service):
    """The ERP stand-in with its control endpoints."""

    def control(self, method: str, path: str, json: Any = None) -> Any:
        resp = httpx.request(method, f"{self.url}/_erp/{path}", json=json, timeout=60)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def configure(self, **values: Any) -> None:
        self.control("PATCH", "config", values)

    def clear(self) -> None:
        self.control("DELETE", "received")

    def stats(self) -> dict[str, Any]:
        return dict(self.control("GET", "stats"))

    def measure_latency_ms(self, requests: int = 5) -> float:
        """Median round trip of a keep-alive POST (checks the configured latency is the latency:
        a listener without TCP_NODELAY adds ~40 ms of delayed-ACK wait per reply)."""
        times = []
        with httpx.Client(timeout=30) as client:
            for _ in range(requests + 1):
                started = time.perf_counter()
                client.post(f"{self.url}/api/_latency_probe", json={})
                times.append((time.perf_counter() - started) * 1000)
        self.clear()
        return sorted(times[1:])[len(times[1:]) // 2]


def start_erp(*, port: int | None = None, log_dir: Path | None = None) -> ErpService:
    port = port or free_port()
    base = start_service(
        "erp",
        [
            sys.executable,
            "-m",
            "rossflow.localstack.erp",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        url=f"http://127.0.0.1:{port}",
        health_url=f"http://127.0.0.1:{port}/_erp/health",
        log_dir=log_dir,
    )
    return ErpService(base.name, base.proc, base.url, base.log_path)


class PrefectService(Service):
    """``prefect server start`` with its own temporary ``PREFECT_HOME``."""

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    def client_env(self) -> dict[str, str]:
        """Environment for processes that talk to this server (flows, block set-up)."""
        return child_env(
            {
                "PREFECT_HOME": str(self.extra["home"]),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
        )

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.extra["home"], ignore_errors=True)


def start_prefect_server(
    *, port: int | None = None, timeout: float = 180.0, log_dir: Path | None = None
) -> PrefectService:
    """A throwaway local-stack Prefect server (SQLite in a temp home, no UI, analytics off)."""
    port = port or free_port()
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-home-"))
    env = child_env(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }
    )
    env.pop("PREFECT_API_URL", None)
    try:
        base = start_service(
            "prefect",
            [
                # Prefect's server plus a fast retry when SQLite is busy, as in `rossflow demo`
                sys.executable,
                "-m",
                "rossflow.localstack.prefect_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-ui",
                "--analytics-off",
            ],
            url=f"http://127.0.0.1:{port}",
            health_url=f"http://127.0.0.1:{port}/api/health",
            env=env,
            timeout=timeout,
            log_dir=log_dir,
        )
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    return PrefectService(base.name, base.proc, base.url, base.log_path, {"home": home})


# ------------------------------------------------------------------------------ measuring


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process plus all its descendants, in bytes (0 once it is gone)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (0 if it is gone)."""
    return procs_cpu_s(process_tree(pid))


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and its live descendants now (empty if it is gone). Finding them scans /proc
    (~1 ms); keep the list where CPU is read often, e.g. inside a measured window."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def procs_cpu_s(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of these processes (those gone count 0)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def cpu_model() -> str:
    """The CPU's model name (every benchmark table names it: numbers depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def settle(
    pids: dict[str, int],
    *,
    busy_cpu_s_per_s: float = 0.1,
    quiet_s: float = 1.0,
    limit_s: float = 30.0,
) -> tuple[float, dict[str, float]]:
    """Wait until the services are quiet: their CPU together below ``busy_cpu_s_per_s`` (10 %
    of one core) for ``quiet_s`` in a row, at most ``limit_s``.

    A Prefect server goes on recording a finished flow run's events for seconds after it ends;
    without this, the next measured run (any variant) shares the cores with that backlog.
    Returns the seconds waited and each service's CPU rate (cores) over the last 0.25 s
    (above the threshold only if ``limit_s`` ran out)."""
    started = time.monotonic()
    step = 0.25
    quiet = 0.0
    last = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    rates: dict[str, float] = {}
    while time.monotonic() - started < limit_s:
        time.sleep(step)
        now = {name: tree_cpu_s(pid) for name, pid in pids.items()}
        rates = {name: (now[name] - last[name]) / step for name in pids}
        last = now
        quiet = quiet + step if sum(rates.values()) < busy_cpu_s_per_s else 0.0
        if quiet >= quiet_s:
            break
    return time.monotonic() - started, rates


def load_average() -> float:
    """1-minute load average (the benchmarks warn when the machine is busy)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


class RssSampler:
    """Samples the RSS of a process tree every ``interval_s`` in a thread; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            rss = tree_rss(proc)
            if rss:
                self.samples += 1
                self.peak_bytes = max(self.peak_bytes, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Measured:
    """Outcome of one measured child process."""

    returncode: int
    wall_s: float
    maxrss_bytes: int  # kernel high-water mark (wait4 ru_maxrss): exact
    sampled_peak_bytes: int  # psutil sampler, child + descendants
    cpu_s: float  # user + system CPU of the child (wait4 rusage)
    log_path: Path
    timed_out: bool = False

    @property
    def peak_rss_mb(self) -> float:
        return max(self.maxrss_bytes, self.sampled_peak_bytes) / MB

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
    log_path: Path | None = None,
    sample_interval_s: float = 0.05,
) -> Measured:
    """Run ``argv`` to completion; wall time (spawn → exit) and peak RSS of that process alone."""
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="bench-child-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(argv), cwd=ROOT, env=dict(env or child_env()), stdout=log, stderr=subprocess.STDOUT
        )
    timed_out = threading.Event()

    def watchdog() -> None:
        if not done.wait(timeout):
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

    done = threading.Event()
    threading.Thread(target=watchdog, name="bench-watchdog", daemon=True).start()
    with RssSampler(proc.pid, sample_interval_s) as sampler:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: do not leave the measured process behind
            done.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
            raise
    wall = time.monotonic() - started
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        returncode=proc.returncode,
        wall_s=wall,
        maxrss_bytes=int(usage.ru_maxrss) * 1024,  # Linux: kilobytes
        sampled_peak_bytes=sampler.peak_bytes,
        cpu_s=usage.ru_utime + usage.ru_stime,
        log_path=log_path,
        timed_out=timed_out.is_set(),
    )


def peak_rss_self_bytes() -> int:
    """This process's RSS high-water mark (for children to report about themselves)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --------------------------------------------------------------------------------- output


def fmt_num(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool) -> str:
    """A plain-text (aligned) or Markdown table; cells are converted with ``str``."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def numeric(text: str) -> bool:
        stripped = (
            re.sub(r"\s*\[\d+\]$", "", text)
            .replace(",", "")
            .replace(".", "")
            .replace("×", "")
            .replace("%", "")
        )
        return stripped.lstrip("-~≈").isdigit()

    def line(row: list[str]) -> str:
        parts = [c.rjust(w) if numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    out = [line(cells[0])]
    if markdown:
        out.append(
            "|"
            + "|".join(
                ("-" * (w + 1) + ":") if any(numeric(r[i]) for r in cells[1:]) else "-" * (w + 2)
                for i, w in enumerate(widths)
            )
            + "|"
        )
    else:
        out.append("  ".join("-" * w for w in widths))
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


@contextlib.contextmanager
def services(*factories: Any) -> Iterator[list[Service]]:
    """Start services in order; stop them in reverse order whatever happens."""
    started: list[Service] = []
    try:
        for factory in factories:
            started.append(factory())
        yield started
    finally:
        for svc in reversed(started):
            with contextlib.suppress(Exception):
                svc.stop()
