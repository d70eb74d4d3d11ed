"""One HTTP policy for every client of the pipeline: the Rossum API client and REST delivery.

* :mod:`.transport`: the pooled async transport (and a blocking one for single-thread loops);
* :mod:`.aiohttp_transport`: the REST delivery clients' transport (aiohttp underneath);
* :mod:`.timeouts`: :class:`Timeouts`, explicit and bounded;
* :mod:`.retry`: :class:`RetryPolicy` (method-aware: what may be repeated), backoff with jitter,
  ``Retry-After``, and which failures may have reached the server;
* :mod:`.urls`: joining a relative URL to a base, and URLs safe to show (no credentials).
"""

from .aiohttp_transport import AiohttpTransport
from .retry import (
    IDEMPOTENT_METHODS,
    NOT_SENT_ERRORS,
    RETRYABLE_STATUSES,
    RetryPolicy,
    is_idempotent,
    is_transient,
    may_have_arrived,
    parse_retry_after,
)
from .timeouts import Timeouts
from .transport import BlockingTransport, async_transport
from .urls import join_url, safe_url

__all__ = [
    "IDEMPOTENT_METHODS",
    "NOT_SENT_ERRORS",
    "RETRYABLE_STATUSES",
    "AiohttpTransport",
    "BlockingTransport",
    "RetryPolicy",
    "Timeouts",
    "async_transport",
    "is_idempotent",
    "is_transient",
    "join_url",
    "may_have_arrived",
    "parse_retry_after",
    "safe_url",
]
