"""Base of the state stores: a :class:`~rossflow.state.database.Database` with the store's
migrations applied, and short transactions (``_tx`` for writes, ``_read`` for reads)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import ClassVar

from rossflow.state.database import Conn, Database
from rossflow.state.schema import migrate


class StateStore:
    """A store of one ``component``; SQLite file at ``path`` unless a URL is configured."""

    component: ClassVar[str] = ""
    migrations: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | Path | None = None, *, url: str | None = None) -> None:
        self.db = Database(path, url=url)
        self.path = self.db.path or self.db.url
        migrate(self.db, self.component, self.migrations)

    @property
    def shared(self) -> bool:
        """True when the state is shared between machines (PostgreSQL)."""
        return self.db.pg

    def _tx(self) -> AbstractContextManager[Conn]:
        return self.db.tx()

    def _read(self) -> AbstractContextManager[Conn]:
        return self.db.read()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
