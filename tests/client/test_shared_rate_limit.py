"""One Rossum rate limit for all workers (issue 14, item 3), counted at the sandbox.

Three worker processes (separate home folders, one shared state store: a SQLite file or
PostgreSQL) hammer the sandbox through RossumClient under a 10 req/s limit. The sandbox records
every request's arrival time; the rate over the run must be 10 req/s ± 10 %. A 429 with
Retry-After sent to one worker pauses all three."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rossflow.state import URL_ENV
from tests.fixtures.postgres import StateBackend

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
RATE = 10.0


def run_workers(
    sandbox,
    backend: StateBackend,
    *,
    mode: str,
    duration: float,
    concurrency: int = 4,
    start: float | None = None,
) -> tuple[float, list[dict[str, int]]]:
    """Start the workers together; returns the agreed start time and each worker's counts."""
    token = sandbox.login()
    env_common = {k: v for k, v in os.environ.items() if k not in (URL_ENV, "ROSSFLOW_RATE_LIMIT")}
    env_common.update(backend.env)
    if backend.url is None:
        env_common[URL_ENV] = f"sqlite:///{backend.path('shared-state.db')}"
    env_common["ROSSFLOW_RATE_LIMIT"] = mode
    env_common["ROSSFLOW_TEST_TOKEN"] = token
    start = start or time.time() + 4.0  # time to import and open the store, then all start at once
    procs = []
    for n in range(WORKERS):
        home = backend.root / f"home-{n}"
        home.mkdir(parents=True, exist_ok=True)
        env = dict(env_common, HOME=str(home))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.client.ratelimit_worker",
                    sandbox.api_url,
                    str(start),
                    str(duration),
                    str(concurrency),
                ],
                cwd=home,
                env=dict(env, PYTHONPATH=str(ROOT)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=duration + 60)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return start, results


def arrivals(sandbox, start: float, end: float) -> list[tuple[float, int]]:
    return [(t, status) for t, status in sandbox.timeline() if start <= t < end]


def test_three_workers_share_one_rate_limit(sandbox, state_backend: StateBackend):
    """The rate across 3 workers stays within 10 req/s ± 10 % over a 10 s run."""
    duration = 10.0
    sandbox.reset_stats()
    start, results = run_workers(sandbox, state_backend, mode="shared", duration=duration)
    seen = arrivals(sandbox, start, start + duration)
    rate = len(seen) / duration
    per_second = [
        sum(1 for t, _ in seen if start + s <= t < start + s + 1) for s in range(int(duration))
    ]
    report = f"{rate:.2f} req/s; per second {per_second}; workers {results}"
    assert RATE * 0.9 <= rate <= RATE * 1.1, report
    assert max(per_second) <= RATE * 1.2, report  # no burst either
    assert all(r["done"] > 0 and r["errors"] == 0 for r in results), report  # all 3 got a share
    assert not any(status == 429 for _, status in seen), report
    # cheap: a round trip to the store buys several requests (3 at 10 req/s)
    for r in results:
        assert 0 < r["reservations"] <= r["sent"] / 2, report
    print(report)  # the measurement, with -s


def test_per_process_limits_add_up_without_the_shared_one(sandbox, tmp_path: Path):
    """The control: with the default (one budget per process), 3 workers send ~3 × 10 req/s,
    so the measurement above would catch a limiter that is not shared."""
    duration = 3.0
    sandbox.reset_stats()
    start, _ = run_workers(
        sandbox, StateBackend("sqlite", tmp_path), mode="local", duration=duration
    )
    rate = len(arrivals(sandbox, start, start + duration)) / duration
    assert rate > RATE * 2, f"{rate:.2f} req/s"


def test_retry_after_pauses_every_worker(sandbox, state_backend: StateBackend):
    """One worker gets a 429 with Retry-After: 2; all three stop sending (after the slots
    already handed out: 3 workers × 0.3 s) until it has passed, then all resume."""
    duration, retry_after, fault_at = 9.0, 3, 3.0
    sandbox.reset_stats()

    def inject_later() -> None:
        time.sleep(max(0.0, start_box["start"] + fault_at - time.time()))
        sandbox.set_faults(
            [
                {
                    "path": "/api/v1/queues/1",
                    "kind": "rate_limit",
                    "retry_after": retry_after,
                    "times": 1,
                }
            ]
        )

    start_box: dict[str, float] = {"start": time.time() + 4.0}
    injector = threading.Thread(target=inject_later, daemon=True)
    injector.start()
    try:
        start, results = run_workers(
            sandbox, state_backend, mode="shared", duration=duration, start=start_box["start"]
        )
    finally:
        injector.join(timeout=30)
        sandbox.clear_faults()
    seen = arrivals(sandbox, start, start + duration)
    refused = [t for t, status in seen if status == 429]
    report = f"429 at {[round(t - start, 2) for t in refused]}; workers {results}"
    assert len(refused) == 1, report
    t429 = refused[0]
    quiet = [t for t, _ in seen if t429 + 1.0 <= t < t429 + retry_after - 0.05]
    before = [t for t, _ in seen if t429 - 1.0 <= t < t429]
    after = [t for t, _ in seen if t429 + retry_after <= t < t429 + retry_after + 1.0]
    report += (
        f"; {len(before)} in the second before, {len(after)} after, while paused:"
        f" {[round(t - t429, 2) for t in quiet]}"
        f"; all: {[round(t - t429, 2) for t, _ in seen if t429 - 0.2 < t < t429 + 3.2]}"
    )
    assert len(before) >= RATE * 0.8, report
    assert quiet == [], report
    assert len(after) >= RATE * 0.8, report
    assert sum(r["rate_limited"] for r in results) == 1, report
    print(report)  # the measurement, with -s


async def test_unreachable_store_falls_back_to_the_process_budget(caplog):
    """Nothing listens where the state store should be: requests still go out, at this
    process's own rate, with a warning naming the budget (and no password)."""
    import asyncio
    import logging

    from rossflow.rossum.ratelimit import SharedRateLimiter
    from rossflow.state.ratelimits import RateLimitStore
    from tests.scaleout.processes import free_port

    url = f"postgresql://rossflow:not-shown@127.0.0.1:{free_port()}/state"
    limiter = SharedRateLimiter("acme.rossum.app/api", 20.0, lambda: RateLimitStore(url=url))
    caplog.set_level(logging.WARNING, logger="rossflow.rossum")
    started = time.monotonic()
    await asyncio.gather(*(limiter.acquire() for _ in range(10)))
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 5.0  # 10 requests at 20 req/s from the local bucket (burst 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "acme.rossum.app/api" in warnings[0] and "unreachable" in warnings[0]
    assert "not-shown" not in warnings[0]
    assert limiter.reservations == 0


def test_block_and_environment_choose_the_budget(monkeypatch, tmp_path: Path):
    """The block's ``shared_rate_limit`` wins over ``ROSSFLOW_RATE_LIMIT``; the key defaults to
    the base URL's host and path (one organisation) and can be overridden; a wrong mode value
    is a clear error."""
    from blocks.rossum import RossumCredentials
    from rossflow.rossum import RateLimiter, SharedRateLimiter
    from rossflow.rossum.ratelimit import RateLimitConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROSSFLOW_RATE_LIMIT", raising=False)
    base = "https://acme.rossum.app/api"
    assert isinstance(RossumCredentials(base_url=base, token="t").get_client().limiter, RateLimiter)

    monkeypatch.setenv("ROSSFLOW_RATE_LIMIT", "shared")
    limiter = RossumCredentials(base_url=base, token="t").get_client().limiter
    assert isinstance(limiter, SharedRateLimiter)
    assert limiter.key == "acme.rossum.app/api" and limiter.rate == 10.0
    keyed = RossumCredentials(base_url=base, token="t", rate_limit_key="acme-eu").get_client()
    assert keyed.limiter.key == "acme-eu"
    local = RossumCredentials(base_url=base, token="t", shared_rate_limit=False).get_client()
    assert isinstance(local.limiter, RateLimiter)

    monkeypatch.setenv("ROSSFLOW_RATE_LIMIT", "cluster")
    with pytest.raises(RateLimitConfigError, match="ROSSFLOW_RATE_LIMIT='cluster'"):
        RossumCredentials(base_url=base, token="t").get_client()
