"""Request budgets shared by every worker: one row per key (a Rossum organisation), a GCRA
token bucket.

A row holds the *theoretical arrival time* ``tat``: the moment the budget is spent up to. A
reservation of ``n`` requests starts at ``max(tat, now - burst tolerance)`` and hands out the
slots one ``1/rate`` apart; while the budget is handed out further than ``horizon`` seconds
ahead, nothing is granted (the caller is told when to ask again), so a pause reaches everyone
quickly. A pause
(``Retry-After``) moves ``tat`` to ``now + seconds``. Time is the database's clock on PostgreSQL
(hosts' clocks may differ) and this host's on SQLite (one host). The row is read under a lock
(``SELECT … FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE``), so concurrent reservations never hand
out the same slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rossflow.state.database import Conn
from rossflow.state.store import StateStore

MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS rate_limits (
        key         TEXT PRIMARY KEY,
        tat         {real} NOT NULL,
        updated_at  {real} NOT NULL
    )
    """,
)


@dataclass(frozen=True)
class Grant:
    """Slots granted by one reservation, as waits from the moment the answer was computed
    (``offsets``, ascending; may be empty), or when to ask again (``retry_in``)."""

    offsets: tuple[float, ...]
    retry_in: float = 0.0


class RateLimitStore(StateStore):
    """``reserve``/``pause`` a shared budget (SQLite file at ``path`` unless a URL is set)."""

    component = "ratelimits"
    migrations = MIGRATIONS

    def __init__(
        self, path: str | Path | None = ".rossflow/ratelimit.db", *, url: str | None = None
    ) -> None:
        super().__init__(path, url=url)

    def _now_and_tat(self, conn: Conn, key: str) -> tuple[float, float]:
        """Lock ``key``'s row (created if missing) and read the clock and ``tat``."""
        conn.execute(
            "INSERT INTO rate_limits(key, tat, updated_at) VALUES (?, 0, 0)"
            " ON CONFLICT(key) DO NOTHING",
            (key,),
        )
        if self.db.pg:
            row = conn.execute(
                "SELECT tat, EXTRACT(EPOCH FROM clock_timestamp())::double precision"
                " FROM rate_limits WHERE key = ? FOR UPDATE",
                (key,),
            ).fetchone()
            return float(row[1]), float(row[0])
        row = conn.execute("SELECT tat FROM rate_limits WHERE key = ?", (key,)).fetchone()
        return time.time(), float(row[0])

    def reserve(
        self, key: str, count: int, *, rate: float, burst: int = 1, horizon: float = 2.0
    ) -> Grant:
        """``count`` slots of ``key``'s budget (``rate`` per second, ``burst`` at once after
        idling), queued after those already handed out; none (and when to ask again) while
        the budget is handed out more than ``horizon`` seconds ahead."""
        if rate <= 0 or count < 1:
            raise ValueError("rate must be > 0 and count >= 1")
        interval = 1.0 / rate
        tolerance = max(0, int(burst) - 1) * interval
        with self._tx() as conn:
            now, tat = self._now_and_tat(conn, key)
            start = max(tat, now - tolerance)
            if start > now + horizon:
                return Grant((), retry_in=start - now - horizon)
            granted = count  # a batch per round trip, queued behind the other workers'
            conn.execute(
                "UPDATE rate_limits SET tat = ?, updated_at = ? WHERE key = ?",
                (start + granted * interval, now, key),
            )
        offsets = tuple(max(0.0, start + i * interval - now) for i in range(granted))
        return Grant(offsets)

    def pause(self, key: str, seconds: float) -> None:
        """No slot of ``key`` starts before ``seconds`` from now (the server said Retry-After)."""
        with self._tx() as conn:
            now, tat = self._now_and_tat(conn, key)
            if now + seconds > tat:
                conn.execute(
                    "UPDATE rate_limits SET tat = ?, updated_at = ? WHERE key = ?",
                    (now + seconds, now, key),
                )
