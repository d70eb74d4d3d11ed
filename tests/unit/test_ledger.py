"""The side-effect ledger: intent, outcome, reruns, sequences, several threads."""

from __future__ import annotations

import threading

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
