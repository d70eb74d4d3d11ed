"""Runtime configuration of the sandbox; mutable at runtime through ``POST /_sandbox/settings``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_USERNAME = "admin@rossflow.local"
DEFAULT_PASSWORD = "rossflow"  # noqa: S105 - documented local sandbox login
MAX_TOKEN_LIFETIME_S = 583200  # 162 h, Rossum's default and maximum


@dataclass
class SandboxConfig:
    """Knobs of one sandbox instance (the ones marked runtime can be changed while serving)."""

    db: str = ":memory:"
    #: Delay between upload and the end of simulated extraction (runtime).
    extraction_delay_s: float = 1.0
    #: Global token-bucket rate limit in requests/s for /api; None or 0 disables it (runtime).
    rate_limit_per_s: float | None = None
    #: Lifetime of login tokens; clients may lower it with max_token_lifetime_s (runtime).
    token_lifetime_s: float = MAX_TOKEN_LIFETIME_S
    #: Base of the exponential backoff between hook retries: base * 2**(attempt-1) (runtime).
    hook_retry_backoff_s: float = 1.0
    #: How often an asynchronous (202 + Location) hook reply is polled; Rossum uses 30 s (runtime).
    hook_poll_interval_s: float = 30.0
    #: Polling limit of asynchronous replies for events whose ``config.max_polling_time_s`` Rossum
    #: ignores (all but ``upload.created`` and ``invocation.scheduled``): 300 s in Rossum (runtime).
    hook_max_polling_time_s: float = 300.0
    #: Upload tasks stay ``running`` this long before they report ``succeeded`` (runtime).
    upload_task_delay_s: float = 0.0
    #: Upload size limit (Rossum: 40 MB per request).
    max_upload_bytes: int = 40 * 1024 * 1024
    #: Public base of the API (``http://host:port/api``) used for hook payloads and background work;
    #: requests use their own Host header instead.
    public_base_url: str = "http://127.0.0.1:8765/api"

    RUNTIME = (
        "extraction_delay_s",
        "rate_limit_per_s",
        "token_lifetime_s",
        "hook_retry_backoff_s",
        "hook_poll_interval_s",
        "hook_max_polling_time_s",
        "upload_task_delay_s",
        "max_upload_bytes",
    )

    def update(self, values: dict[str, Any]) -> None:
        """Apply runtime settings; unknown keys or bad types raise ValueError."""
        known = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in known or key not in self.RUNTIME:
                raise ValueError(f"unknown setting {key!r}")
            bad_type = isinstance(value, bool) or not isinstance(value, int | float)
            if value is not None and bad_type:
                raise ValueError(f"setting {key!r} must be a number")
            if value is None and key != "rate_limit_per_s":
                raise ValueError(f"setting {key!r} must be a number")
            setattr(self, key, int(value) if key == "max_upload_bytes" else value)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in self.RUNTIME or k == "db"}
