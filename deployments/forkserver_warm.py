"""Imported once by ``rossflow serve``'s fork server (after Prefect): check the Prefect
server's API version there, so that no forked flow run pays for it.

Prefect checks the server's version once per process (``raise_for_api_version_mismatch_once``,
a ``GET /admin/version`` through a fresh client: about 0.4 s of a flow run's start under load).
A forked flow run inherits this process's memory, the check's cache included, so it skips it.
Nothing is kept open: the client is closed before any run is forked. If the server cannot be
reached now (no retries, 5 s at most), the runs check for themselves as usual.
"""

from __future__ import annotations

import logging

log = logging.getLogger("rossflow.serve")

#: Why the check could not run here (None when it ran).
ERROR: str | None = None


def check_server_version() -> bool:
    """Run Prefect's once-per-process version check here; False if it could not run."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        # Bounded: no retries, 5 s; the fork server (and so the first run) must not wait long.
        with (
            temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(sync_client=True, httpx_settings={"timeout": 5.0}) as client,
        ):
            client.raise_for_api_version_mismatch_once()
        return True
    except Exception as exc:  # the flow runs will check (and report) it themselves
        global ERROR
        ERROR = f"{type(exc).__name__}: {exc}"
        log.debug("fork server: server version check skipped: %s", exc)
        return False


CHECKED = check_server_version()
