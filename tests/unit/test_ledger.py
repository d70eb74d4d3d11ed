"""The side-effect ledger: intent, outcome, reruns, sequences, several threads."""

from __future__ import annotations

import threading

import pytest

from rossflow.artifacts import ArtifactStore
from rossflow.ledger import Ledger


def test_begin_finish_and_rerun_skips_done(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    assert ledger.begin("k1", kind="delivery", subject="7", step="rest", target="erp") is None
    ledger.finish("k1", ok=True, result={"http_status": 201})
    # a new process opening the same file sees the outcome
    again = Ledger(tmp_path / "l.db")
    done = again.begin("k1", kind="delivery", subject="7")
    assert done is not None and done.state == "done" and done.result == {"http_status": 201}


def test_started_without_finish_is_visible_as_in_flight(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.begin("k2", kind="upload", subject="1:abc")
    stuck = Ledger(tmp_path / "l.db").in_state("upload", "started")
    assert [e.key for e in stuck] == ["k2"]
    # beginning again counts the attempt
    ledger.begin("k2", kind="upload", subject="1:abc")
    assert ledger.get("k2").attempts == 2


def test_failed_effect_is_retried_not_skipped(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.begin("k3", kind="delivery", subject="9")
    ledger.finish("k3", ok=False, result={"error": "HTTP 503"})
    assert ledger.begin("k3", kind="delivery", subject="9") is None
    assert ledger.get("k3").state == "started"


def test_sequence_is_stable_per_owner(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    a = ledger.sequence("seq_1", "100:sftp")
    b = ledger.sequence("seq_1", "101:sftp")
    assert (a, b) == (0, 1)
    assert Ledger(tmp_path / "l.db").sequence("seq_1", "100:sftp") == 0


def test_forget_subject(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.begin_many([("a", "delivery", "5", "s", "t"), ("b", "delivery", "6", "s", "t")])
    ledger.sequence("seq_1", "5:s")
    assert ledger.forget("delivery", "5") == 1
    assert ledger.get("a") is None and ledger.get("b") is not None


def test_concurrent_threads_share_one_file(tmp_path):
    path = tmp_path / "l.db"
    ledgers = [Ledger(path) for _ in range(4)]

    def work(i: int) -> None:
        for n in range(50):
            key = f"{i}-{n}"
            ledgers[i].begin(key, kind="delivery", subject=str(n))
            ledgers[i].finish(key, ok=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [f"{i}-{n}" for i in range(4) for n in range(50)]
    assert len(Ledger(path).get_many(keys)) == 200


def test_artifact_store_redacts_and_purges(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    ref = store.put(
        5, "rest erp", "request.json", b'{"token": "s3cr3t-value"}', secrets=["s3cr3t-value"]
    )
    assert store.get(ref) == b'{"token": "***"}'
    assert store.purge(5) == 1
    assert store.purge(5) == 0


def test_artifact_store_batches_rows_lists_and_exports(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    refs = store.put_rows(
        [
            (7, "render", "invoice.json", b"{}"),
            (7, "post invoice", "response.body", b"ok"),
            (8, "render", "invoice.json", b"[]"),
        ]
    )
    assert refs == [
        "7/render/invoice.json",
        "7/post_invoice/response.body",
        "8/render/invoice.json",
    ]
    store.put_rows([(7, "render", "invoice.json", b'{"v": 2}')])  # a rerun replaces its copy
    assert store.read(7, "render", "invoice.json") == b'{"v": 2}'
    assert [i.ref for i in store.listing(7)] == [
        "7/post_invoice/response.body",
        "7/render/invoice.json",
    ]
    written = store.export(tmp_path / "out", 7)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "7/post_invoice/response.body",
        "7/render/invoice.json",
    ]
    assert (tmp_path / "out" / "7" / "render" / "invoice.json").read_bytes() == b'{"v": 2}'
    with pytest.raises(KeyError, match="8/post/x"):
        store.read(8, "post", "x")
    with pytest.raises(ValueError, match="not an artifact reference"):
        store.get("../../etc/passwd")


def test_artifacts_command_lists_shows_and_exports(tmp_path, capsys):
    from rossflow.artifacts_cli import run

    state = ["--state-dir", str(tmp_path)]
    assert run([*state, "list"]) == 2
    assert "nothing stored at" in capsys.readouterr().err
    ArtifactStore(tmp_path / "artifacts").put(9, "post", "response.body", b"HTTP 201 body")
    assert run([*state, "list", "--annotation", "9"]) == 0
    assert "9  post/response.body  13 B" in capsys.readouterr().out
    assert run([*state, "show", "--annotation", "9", "--step", "post", "--name", "x"]) == 1
    assert "has no post/x (stored: post/response.body)" in capsys.readouterr().err
    assert (
        run([*state, "show", "--annotation", "9", "--step", "post", "--name", "response.body"]) == 0
    )
    assert capsys.readouterr().out == "HTTP 201 body"
    assert run([*state, "export", "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "9" / "post" / "response.body").read_bytes() == b"HTTP 201 body"


async def test_ledger_writes_group_the_claims_of_one_loop_turn(tmp_path):
    import asyncio

    from rossflow.export.ledger_writes import LedgerWrites
    from rossflow.ledger import EffectBusy

    class CountingLedger(Ledger):
        transactions = 0

        def claim_many(self, items):
            CountingLedger.transactions += 1
            return super().claim_many(items)

        def finish_many(self, items):
            CountingLedger.transactions += 1
            return super().finish_many(items)

    ledger = CountingLedger(tmp_path / "l.db")
    writes = LedgerWrites(ledger)
    keys = [f"k{i}" for i in range(20)]
    claimed = await asyncio.gather(
        *(writes.claim(k, kind="delivery", subject=str(i)) for i, k in enumerate(keys))
    )
    assert claimed == [None] * 20 and CountingLedger.transactions == 1
    await asyncio.gather(*(writes.finish(k, ok=True, result={"n": k}) for k in keys[:10]))
    assert CountingLedger.transactions == 2
    assert ledger.get("k3").state == "done" and ledger.get("k3").result == {"n": "k3"}
    # done: returned as such; held by another live worker: EffectBusy for that caller only
    other = Ledger(tmp_path / "l.db")
    other.owner = "host-b:1:other"
    other.claim("held", kind="delivery", subject="99")
    done, busy, fresh = await asyncio.gather(
        writes.claim("k3", kind="delivery", subject="3"),
        writes.claim("held", kind="delivery", subject="99", step="post"),
        writes.claim("new", kind="delivery", subject="100"),
        return_exceptions=True,
    )
    assert done is not None and done.state == "done"
    assert isinstance(busy, EffectBusy) and "step 'post' of 99" in str(busy)
    assert fresh is None

    # a failing transaction fails every waiter of that group (and only that group)
    class FailingLedger(Ledger):
        def claim_many(self, items):
            if any(key.startswith("bad") for key, *_ in items):
                raise RuntimeError("database is locked")
            return super().claim_many(items)

    writes = LedgerWrites(FailingLedger(tmp_path / "f.db"))
    outcomes = await asyncio.gather(
        writes.claim("bad-1", kind="delivery", subject="1"),
        writes.claim("ok-1", kind="delivery", subject="2"),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == ["RuntimeError", "RuntimeError"]
    assert await writes.claim("ok-2", kind="delivery", subject="3") is None
