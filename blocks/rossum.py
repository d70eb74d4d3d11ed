"""Prefect block holding how to reach Rossum: URL, credentials (secret) and client tuning."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from rossflow.rossum import RetryPolicy, RossumClient, Timeouts


class RossumCredentials(Block):
    """Rossum API access. Give either a username and password, or an API token."""

    _block_type_name = "Rossum Credentials"
    _block_type_slug = "rossum-credentials"
    _description = "Base URL and credentials of a Rossum organization (or the local sandbox)."

    base_url: str = Field(
        default="http://127.0.0.1:8765/api",
        description="API base, e.g. https://acme.rossum.app/api",
    )
    username: str | None = Field(default=None, description="Login (service account) e-mail.")
    password: SecretStr | None = Field(default=None, description="Password for the username.")
    token: SecretStr | None = Field(default=None, description="API token instead of a login.")
    max_token_lifetime_s: int | None = Field(
        default=None, description="Ask Rossum for shorter-lived tokens (seconds)."
    )
    rate_limit_per_s: float | None = Field(
        default=10.0,
        description=(
            "Requests per second (Rossum allows 10): per process, or for all workers together"
            " when the rate limit is shared."
        ),
    )
    shared_rate_limit: bool | None = Field(
        default=None,
        description=(
            "One budget for all workers (kept in the state store: SQLite on one host,"
            " PostgreSQL via ROSSFLOW_STATE_URL). Empty: the ROSSFLOW_RATE_LIMIT variable"
            " decides ('shared' or 'local', the default: one budget per process)."
        ),
    )
    rate_limit_key: str | None = Field(
        default=None,
        description=(
            "Name of the shared budget; blocks with the same key share it. Default: the"
            " base URL's host and path (one Rossum organisation), e.g. acme.rossum.app/api."
        ),
    )
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_attempts: int = Field(default=5, description="Attempts for requests safe to repeat.")
    max_connections: int = 20

    def get_client(self) -> RossumClient:
        """A new async client (one per event loop; tokens and the rate budget are shared)."""
        return RossumClient(
            self.base_url,
            token=self.token,
            username=self.username,
            password=self.password,
            max_token_lifetime_s=self.max_token_lifetime_s,
            timeouts=Timeouts(
                connect=self.connect_timeout_s,
                read=self.read_timeout_s,
                write=self.read_timeout_s,
            ),
            retry=RetryPolicy(max_attempts=self.max_attempts),
            rate_limit_per_s=self.rate_limit_per_s,
            shared_rate_limit=self.shared_rate_limit,
            rate_limit_key=self.rate_limit_key,
            max_connections=self.max_connections,
        )
