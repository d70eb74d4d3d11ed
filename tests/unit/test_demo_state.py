"""The demo's state (sandbox DB + ledgers + SFTP folders) is reused together or reset together."""

from __future__ import annotations

from pathlib import Path

from rossflow.demo import STATE_FILE, prepare_state, save_state


def _populate(home: Path) -> None:
    (home / "sandbox.db").write_bytes(b"db")
    (home / "sandbox.db-wal").write_bytes(b"wal")
    (home / "ingest.db").write_bytes(b"ledger")
    (home / "export-state").mkdir()
    (home / "export-state" / "ledger.db").write_bytes(b"ledger")
    (home / "sftp" / "inbox").mkdir(parents=True)


def test_new_folder_starts_at_sample_one(tmp_path: Path) -> None:
    state, note = prepare_state(tmp_path)
    assert state["next_sample"] == 1 and note is None
    assert (tmp_path / STATE_FILE).exists()


def test_complete_state_is_reused(tmp_path: Path) -> None:
    state, _ = prepare_state(tmp_path)
    _populate(tmp_path)
    state["next_sample"] = 9
    save_state(tmp_path, state)
    again, note = prepare_state(tmp_path)
    assert note is None and again["next_sample"] == 9
    assert (tmp_path / "ingest.db").exists() and (tmp_path / "sandbox.db").exists()


def test_a_missing_part_resets_every_part(tmp_path: Path) -> None:
    state, _ = prepare_state(tmp_path)
    _populate(tmp_path)
    state["next_sample"] = 9
    save_state(tmp_path, state)
    (tmp_path / "sandbox.db").unlink()  # e.g. deleted by hand: the ledgers would lie
    again, note = prepare_state(tmp_path)
    assert note and "missing: sandbox.db" in note
    assert again["next_sample"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != STATE_FILE]
    assert leftovers == []


def test_ledgers_without_state_file_are_reset(tmp_path: Path) -> None:
    _populate(tmp_path)  # e.g. a folder from before the state file existed
    state, note = prepare_state(tmp_path)
    assert note and "no demo-state.json" in note and state["next_sample"] == 1
    assert not (tmp_path / "ingest.db").exists() and not (tmp_path / "sandbox.db-wal").exists()
