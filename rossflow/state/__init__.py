"""rossflow's durable state (delivery ledger, ingest runs and leases, webhook dedupe,
watermarks): SQLite on one machine by default, PostgreSQL when ``ROSSFLOW_STATE_URL`` says so."""

from rossflow.state.database import (
    DEFAULT_SCHEMA,
    SCHEMA_ENV,
    URL_ENV,
    Database,
    StateConfigError,
    configured_url,
)
from rossflow.state.schema import SchemaTooNew, migrate
from rossflow.state.store import StateStore

__all__ = [
    "DEFAULT_SCHEMA",
    "SCHEMA_ENV",
    "URL_ENV",
    "Database",
    "SchemaTooNew",
    "StateConfigError",
    "StateStore",
    "configured_url",
    "migrate",
]
