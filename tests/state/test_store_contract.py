"""The state stores behave the same on SQLite (one host) and PostgreSQL (several hosts)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from rossflow.ingest.state import IngestState, RunOwner
from rossflow.ledger import EffectBusy, Ledger
from rossflow.state import Database, SchemaTooNew, migrate
from rossflow.state.owner import HOST
from rossflow.state.watermarks import WatermarkStore
from rossflow.webhook.dedup import DedupStore
from tests.fixtures.postgres import StateBackend

OTHER_HOST = json.dumps({"host": "elsewhere.example", "pid": 1, "proc_started": 1.0})


def ledger(backend: StateBackend, **kw: float) -> Ledger:
    return Ledger(backend.path("ledger.db"), url=backend.url, **kw)


def test_backend_is_the_one_asked_for(state_backend: StateBackend) -> None:
    store = ledger(state_backend)
    assert store.db.dialect == state_backend.name
    assert store.shared is (state_backend.name == "postgresql")


def test_effects_roundtrip(state_backend: StateBackend) -> None:
    store = ledger(state_backend)
    assert store.begin("k1", kind="delivery", subject="7", step="erp", target="t") is None
    store.begin_many([("k2", "delivery", "7", "sftp", "t2"), ("k3", "upload", "q:1", "", "")])
    store.finish("k1", ok=True, result={"record": {"status_code": 201}, "at": 1.5})
    store.finish_many([("k2", False, {"error": "boom"})])
    got = store.get("k1")
    assert got is not None and got.state == "done" and got.result["record"]["status_code"] == 201
    assert got.updated_at == pytest.approx(time.time(), abs=30)  # full precision epoch seconds
    assert store.get("nope") is None
    assert set(store.get_many(["k1", "k2", "k3", "nope"])) == {"k1", "k2", "k3"}
    assert [e.key for e in store.for_subject("delivery", "7")] == ["k1", "k2"]
    assert [e.key for e in store.in_state("upload", "started")] == ["k3"]
    assert store.in_state("upload", "started", older_than_s=3600) == []
    # A done effect is reported, not restarted; a failed one restarts with one more attempt.
    assert store.begin("k1", kind="delivery", subject="7").state == "done"  # type: ignore[union-attr]
    assert store.begin("k2", kind="delivery", subject="7") is None
    assert store.get("k2").attempts == 2  # type: ignore[union-attr]
    assert store.sequence("files", "7:sftp") == 0
    assert store.forget("delivery", "7") == 2
    assert store.get("k1") is None and store.get("k3") is not None


def test_timestamps_keep_subsecond_precision(state_backend: StateBackend) -> None:
    store = ledger(state_backend)
    before = time.time()
    store.begin("k", kind="delivery", subject="1")
    created = store.get("k").created_at  # type: ignore[union-attr]
    assert before - 0.01 <= created <= time.time() + 0.01  # REAL (4 bytes) would be off by minutes


def test_sequences_are_allocated_once_and_without_gaps(state_backend: StateBackend) -> None:
    stores = [ledger(state_backend), ledger(state_backend)]
    got: dict[str, int] = {}
    lock = threading.Lock()

    def allocate(index: int) -> None:
        for n in range(25):
            owner = f"{n % 20}:step"  # each owner asked for several times, by both stores
            value = stores[index % 2].sequence("pipe:files:seq", owner, start=1)
            with lock:
                assert got.setdefault(owner, value) == value

    threads = [threading.Thread(target=allocate, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got.values()) == list(range(1, 21))


def test_claim_is_exclusive_while_the_holder_lives(state_backend: StateBackend) -> None:
    mine = ledger(state_backend)
    theirs = ledger(state_backend)
    theirs.owner = OTHER_HOST  # a worker on another machine
    assert theirs.claim("k", kind="delivery", subject="42", step="erp") is None
    with pytest.raises(EffectBusy) as busy:
        mine.claim("k", kind="delivery", subject="42", step="erp")
    assert "step 'erp' of 42" in str(busy.value) and "elsewhere.example" in str(busy.value)
    claims = mine.claim_many([("k", "delivery", "42", "erp", ""), ("k2", "delivery", "42", "", "")])
    assert claims.busy == {"k": OTHER_HOST} and claims.done == {}
    # The holder itself may claim again (a retry within the same process).
    assert theirs.claim("k", kind="delivery", subject="42") is None
    theirs.finish("k", ok=True, result={"record": {"status_code": 200}})
    done = mine.claim("k", kind="delivery", subject="42")
    assert done is not None and done.state == "done"


def test_claim_taken_over_after_failure_expiry_or_death(state_backend: StateBackend) -> None:
    mine = ledger(state_backend)
    other = ledger(state_backend, lease_s=0.2)
    other.owner = OTHER_HOST
    other.claim("expiring", kind="delivery", subject="1")
    other.claim("failed", kind="delivery", subject="1")
    other.finish("failed", ok=False, result={"error": "x"})
    dead = ledger(state_backend)
    dead.owner = json.dumps({"host": HOST, "pid": 2**22 + 12345, "proc_started": 1.0})
    dead.claim("dead", kind="delivery", subject="1")
    assert mine.claim("failed", kind="delivery", subject="1") is None
    assert mine.claim("dead", kind="delivery", subject="1") is None  # this host, process gone
    with pytest.raises(EffectBusy):
        mine.claim("expiring", kind="delivery", subject="1")
    time.sleep(0.3)
    assert mine.claim("expiring", kind="delivery", subject="1") is None
    assert mine.get("expiring").attempts == 2  # type: ignore[union-attr]


def test_a_claim_reports_what_it_took_over(state_backend: StateBackend) -> None:
    """The REST step decides "outcome unknown" on what the claim found under its row lock (a
    read before the claim missed a call another run made and finished in between: the two-host
    scale test once saw the same invoice POSTed twice with ``idempotency: none``)."""
    mine = ledger(state_backend)
    other = ledger(state_backend)
    other.owner = OTHER_HOST
    other.claim("uncertain", kind="delivery", subject="1")
    other.finish("uncertain", ok=False, result={"uncertain": True, "attempts": ["HTTP 503"]})
    dead = ledger(state_backend)
    dead.owner = json.dumps({"host": HOST, "pid": 2**22 + 12345, "proc_started": 1.0})
    dead.claim("in flight", kind="delivery", subject="1")
    claims = mine.claim_many(
        [(k, "delivery", "1", "erp", "") for k in ("uncertain", "in flight", "fresh")]
    )
    assert claims.done == {} and claims.busy == {}
    assert set(claims.taken) == {"uncertain", "in flight"}  # a fresh key takes nothing over
    assert claims.taken["uncertain"].state == "failed"
    assert claims.taken["uncertain"].result["uncertain"] is True
    assert claims.taken["in flight"].state == "started"
    assert mine.get("in flight").state == "started"  # type: ignore[union-attr]


def test_ingest_leases_and_locks(state_backend: StateBackend) -> None:
    a = IngestState(state_backend.path("ingest.db"), url=state_backend.url, stale_after_s=60)
    b = IngestState(state_backend.path("ingest.db"), url=state_backend.url, stale_after_s=60)
    run_a, run_b = RunOwner.current("run-a"), RunOwner.current("run-b")
    a.register_run(run_a)
    b.register_run(run_b)
    assert a.acquire_lease("q:sha", "tok-a", "run-a") is None
    assert b.acquire_lease("q:sha", "tok-b", "run-b") == "tok-a"
    assert a.acquire_lease("q:sha", "tok-a", "run-a") is None  # re-entrant for its token
    assert b.lease_holder("q:sha") == "tok-a"
    assert a.try_lock("scan", "run-a") and not b.try_lock("scan", "run-b")
    assert b.stats() == {"runs": 2, "leases": 1}
    assert not b.run_is_dead("run-a", me="run-b")
    a.finish_run(run_a.finished())  # releases its leases and locks
    assert b.run_is_dead("run-a", me="run-b")
    assert b.acquire_lease("q:sha", "tok-b", "run-b") is None
    assert b.try_lock("scan", "run-b")
    b.release_lease("q:sha", "tok-b")
    assert a.lease_holder("q:sha") is None
    owner, finished = b.get_run("run-a")
    assert owner is not None and owner.run_id == "run-a" and finished


def test_lease_of_a_stale_run_is_taken_over(state_backend: StateBackend) -> None:
    a = IngestState(state_backend.path("ingest.db"), url=state_backend.url, stale_after_s=0.2)
    stale = RunOwner("run-old", "elsewhere.example", 1, 1.0, time.time(), time.time())
    a.register_run(stale)
    assert a.acquire_lease("k", "tok-old", "run-old") is None
    assert a.acquire_lease("k", "tok-new", "run-new") == "tok-old"
    time.sleep(0.3)  # no heartbeat for longer than stale_after_s
    assert a.acquire_lease("k", "tok-new", "run-new") is None


def test_webhook_dedupe(state_backend: StateBackend) -> None:
    one = DedupStore(state_backend.path("dedup.db"), ttl_s=60, url=state_backend.url)
    two = DedupStore(state_backend.path("dedup.db"), ttl_s=60, url=state_backend.url)
    assert one.seen("req-1") is None
    one.remember("req-1", "ev-1")
    assert two.seen("req-1") == "ev-1"  # a second receiver sees what the first passed on
    two.remember("req-1", "ev-2")
    assert one.seen("req-1") == "ev-2" and len(one) == 1
    short = DedupStore(state_backend.path("dedup.db"), ttl_s=0.0, url=state_backend.url)
    time.sleep(0.01)
    assert short.seen("req-1") is None


def test_memory_dedupe_stays_in_the_process(state_backend: StateBackend) -> None:
    store = DedupStore(":memory:", url=state_backend.url)
    assert store.db.dialect == "sqlite" and store.db.memory


def test_watermarks_compare_and_set(state_backend: StateBackend) -> None:
    a = WatermarkStore(state_backend.path(), url=state_backend.url)
    b = WatermarkStore(state_backend.path(), url=state_backend.url)
    assert a.get(101, "erp") is None
    assert a.advance(101, "erp", None, "2026-01-01T00:00:00Z")
    assert not b.advance(101, "erp", None, "2026-01-02T00:00:00Z")  # someone set it already
    assert not b.advance(101, "erp", "stale", "2026-01-02T00:00:00Z")
    assert b.advance(101, "erp", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
    assert a.get("101", "erp") == "2026-01-02T00:00:00Z"
    assert a.get(101, "other") is None


def test_versions_are_recorded_and_a_newer_schema_is_refused(state_backend: StateBackend) -> None:
    db = Database(state_backend.path("v.db"), url=state_backend.url)
    steps = ["CREATE TABLE t1 (a TEXT PRIMARY KEY)", "ALTER TABLE t1 ADD COLUMN b {real}"]
    assert migrate(db, "demo", steps[:1]) == 0
    assert migrate(db, "demo", steps) == 1
    assert migrate(db, "demo", steps) == 2  # nothing to do
    with db.tx() as conn:
        conn.execute("INSERT INTO t1(a, b) VALUES (?, ?)", ("x", 1.25))
    with pytest.raises(SchemaTooNew, match="'demo' tables are at schema version 2"):
        migrate(db, "demo", steps[:1])


def test_password_from_its_own_variable(
    pg_state: StateBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    from rossflow.state.database import PASSWORD_ENV

    assert pg_state.url is not None
    url = make_url(pg_state.url)
    bare = pg_state.url.replace(f":{url.password}@", "@")
    assert url.password and url.password not in bare
    monkeypatch.setenv(PASSWORD_ENV, url.password + "\n")  # as read from a secret file
    store = WatermarkStore(url=bare)
    assert store.advance(1, "p", None, "v") and store.get(1, "p") == "v"
    assert url.password not in store.db.url  # never shown


def test_bad_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from rossflow.state import StateConfigError

    with pytest.raises(StateConfigError, match="unsupported database 'mysql'"):
        Database(tmp_path / "x.db", url="mysql://u@h/db")
    with pytest.raises(StateConfigError, match="not a database URL"):
        Database(tmp_path / "x.db", url="not a url")
    monkeypatch.setenv("ROSSFLOW_STATE_SCHEMA", "Bad-Name")
    with pytest.raises(StateConfigError, match="Bad-Name"):
        Database(tmp_path / "x.db", url="postgresql://u@127.0.0.1:1/db")


def test_attempt_generations(state_backend: StateBackend) -> None:
    a, b = ledger(state_backend), ledger(state_backend)
    assert a.generations(["1", "2"]) == {"1": 0, "2": 0}
    assert a.next_generation("1") == 1
    assert b.next_generation("1") == 2
    assert b.generations(["1", "2"]) == {"1": 2, "2": 0}


def test_a_forked_child_uses_its_own_connections(pg_state: StateBackend) -> None:
    import os

    store = WatermarkStore(url=pg_state.url)
    assert store.advance(1, "p", None, "parent")
    pid = os.fork()
    if pid == 0:  # the child: its own pool, the parent's connections untouched
        code = 1
        try:
            code = 0 if store.advance(1, "p", "parent", "child") else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get(1, "p") == "child"  # and the parent's pool still works
