"""Real servers for the scale-out test: a throwaway PostgreSQL cluster, a Prefect server on it,
and Prefect workers, each a subprocess that is always stopped (with its children) afterwards.

PostgreSQL comes from Debian's ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``). The
postmaster refuses to run as root, so as root every PostgreSQL command runs as the ``postgres``
system user the package creates (``runuser -u postgres --``) in a temporary directory it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil

PG_USER = "prefect"
PG_PASSWORD = "scaleout-secret"  # a throwaway cluster on 127.0.0.1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> str | None:
    """Where ``initdb``/``pg_ctl`` live: $ROSSFLOW_PG_BINDIR, PATH, or Debian's newest version."""
    explicit = os.environ.get("ROSSFLOW_PG_BINDIR")
    if explicit:
        return explicit
    on_path = shutil.which("initdb")
    if on_path:
        return str(Path(on_path).resolve().parent)
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    found.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return str(Path(found[-1]).parent)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


class PostgresCluster:
    """``initdb`` + ``pg_ctl start`` on a temporary directory and a free port; ``stop`` removes
    everything. Password (SCRAM) authentication over TCP on 127.0.0.1, like a real server."""

    def __init__(self, bindir: str, *, port: int | None = None) -> None:
        self.bindir = bindir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="rossflow-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError(
                    "running as root needs the 'postgres' system user (apt-get install postgresql)"
                ) from exc
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.started = False
        self.startup_s = 0.0  # initdb + start + createdb

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Prefect (``PREFECT_API_DATABASE_CONNECTION_URL``)."""
        return f"postgresql+asyncpg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/prefect"

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [*self._as_postgres, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"{tail(self.log)}"
            )

    def start(self) -> PostgresCluster:
        begun = time.monotonic()
        pwfile = self.root / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            f"{self.bindir}/initdb",
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        # Durability is irrelevant for a throwaway cluster; speed is not.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            f"{self.bindir}/pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "90",
            "-o", options, "start",
        )  # fmt: skip
        self.started = True
        self._run(
            f"{self.bindir}/createdb", "-h", str(self.root), "-p", str(self.port), "-U", PG_USER,
            "prefect",
        )  # fmt: skip
        self.startup_s = time.monotonic() - begun
        return self

    def stop(self) -> None:
        try:
            if self.started:
                try:
                    self._run(
                        f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w",
                        "-t", "30", "stop",
                    )  # fmt: skip
                except (RuntimeError, subprocess.TimeoutExpired):
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        stop_tree(pid)


def stop_tree(*pids: int, timeout: float = 10.0) -> None:
    """Stop processes we started and every process they started: SIGTERM to all of them at
    once, then SIGKILL to whatever is still alive after ``timeout``."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def stop_all(services: Sequence[Service]) -> None:
    """Stop several services together (one shared grace period, not one each)."""
    stop_tree(*(s.proc.pid for s in services if s.running()))
    for service in services:
        service.stop()


class Service:
    """A subprocess with its output in a log file; ``stop`` ends it and its children."""

    def __init__(
        self, name: str, args: Sequence[str], env: dict[str, str], log: Path, url: str = ""
    ) -> None:
        self.name = name
        self.url = url
        self.args = list(args)
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            self.args, env=env, stdout=self._fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.running():
            stop_tree(self.proc.pid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._fh.close()

    def output(self, lines: int = 60) -> str:
        return tail(self.log, lines)


def prefect_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a Prefect subprocess: this one's, minus any Prefect settings it had."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false",
        COLUMNS="250",  # keep rich from wrapping log lines
    )
    env.update(settings)
    return env


def start_prefect_server(root: Path, database_url: str, port: int | None = None) -> Service:
    port = port or free_port()
    home = root / "server-home"
    home.mkdir(parents=True, exist_ok=True)
    env = prefect_env(
        home,
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
        PREFECT_API_DATABASE_TIMEOUT="60",
        PREFECT_API_DATABASE_CONNECTION_TIMEOUT="30",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}/api"
    return Service("prefect-server", [*args, "--port", str(port)], env, root / "server.log", url)


def wait_healthy(server: Service, url: str, timeout: float) -> float:
    """Poll ``url`` until it answers 200; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not server.running():
            raise RuntimeError(f"{server.name} exited:\n{server.output()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{server.name} not healthy after {timeout:.0f} s:\n{server.output()}")


def start_worker(
    root: Path,
    api_url: str,
    pool: str,
    name: str,
    limit: int,
    *,
    home: Path | None = None,
    work_queue: str | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Service:
    """``prefect worker start`` with its own ``PREFECT_HOME`` (``home``, by default
    ``root/<name>-home``); ``env`` adds variables (e.g. ``HOME``, ``ROSSFLOW_STATE_URL``) that
    its flow-run subprocesses inherit; ``work_queue`` limits it to one queue of the pool."""
    home = home or root / f"{name}-home"
    home.mkdir(parents=True, exist_ok=True)
    worker_env = prefect_env(
        home,
        PREFECT_API_URL=api_url,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="10",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    worker_env.update(env or {})
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    args += ["--name", name, "--limit", str(limit), "--install-policy", "never"]
    if work_queue:
        args += ["--work-queue", work_queue]
    return Service(name, args, worker_env, log or root / f"{name}.log")


def kill_tree(*services: Service) -> list[int]:
    """SIGKILL services and every process they started, all at once (a machine losing power:
    nothing gets to clean up); returns the pids killed."""
    procs: list[psutil.Process] = []
    for service in services:
        try:
            root = psutil.Process(service.proc.pid)
            procs += [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    for service in services:
        service.stop()  # reaps the worker and closes its log
    return [p.pid for p in procs]
