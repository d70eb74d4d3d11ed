"""The fork server runs Prefect's server version check once, so forked flow runs skip it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import multiprocessing, sys
from prefect.client.orchestration import get_client
from prefect._internal.version_checking import (
    _api_version_check_key, _is_api_version_check_cached,
)

def cached() -> bool:
    client = get_client(sync_client=True)
    return _is_api_version_check_cached(
        _api_version_check_key(str(client.api_url), client.client_version())
    )

def child(queue) -> None:
    queue.put(cached())

if __name__ == "__main__":
    before = cached()
    import deployments.forkserver_warm as warm
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    in_child = queue.get(timeout=30)
    proc.join(30)
    print(before, warm.CHECKED, cached(), in_child)
    print(warm.ERROR, file=sys.stderr)
"""


def _run(api_url: str, *, reachable: bool) -> tuple[list[str], float]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[1:2] == [str(reachable)], out.stderr[-2000:]
    return out.stdout.split(), time.monotonic() - started


@pytest.mark.usefixtures("prefect_harness")
def test_version_check_runs_in_the_parent_and_is_inherited_by_forked_runs() -> None:
    from prefect.settings import PREFECT_API_URL

    words, _ = _run(str(PREFECT_API_URL.value()), reachable=True)
    # not cached before; checked and cached on import; a forked process sees it cached
    assert words == ["False", "True", "True", "True"]


def test_unreachable_server_is_skipped_quietly() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    words, seconds = _run(f"http://127.0.0.1:{port}/api", reachable=False)
    assert words == ["False", "False", "False", "False"]
    assert seconds < 60  # no retry loop (Prefect's default retries take minutes)
