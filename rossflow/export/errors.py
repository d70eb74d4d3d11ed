"""Exception hierarchy of the export pipeline and secret redaction.

Rossum's hosted pipeline reports failures as one generic sentence ("Some exception occurred
during export pipeline ..."). Every error here instead carries the step, the target, the HTTP
status and a short, secret-free excerpt of the reply so an operator can act on the message alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "ConditionError",
    "ConditionEvalError",
    "ConfigError",
    "DeliveryError",
    "EvaluationFailed",
    "ExportError",
    "ExtractionError",
    "FilenameError",
    "PlaceholderError",
    "StepError",
    "TemplateRenderError",
    "excerpt",
    "redact",
]

EXCERPT_LIMIT = 300
UNCERTAIN_NOTE = "outcome unknown: the ERP may have created this document; check before retrying"
NOT_DELIVERED_NOTE = "not delivered"
REDACTED = "***"
# Secrets shorter than this are not masked: masking "1" or "ab" would shred every message.
_MIN_SECRET_LEN = 4


def _secret_values(secrets: Iterable[Any] | Mapping[str, Any] | None) -> list[str]:
    if not secrets:
        return []
    values = secrets.values() if isinstance(secrets, Mapping) else secrets
    out: set[str] = set()
    for value in values:
        if value is None:
            continue
        # pydantic SecretStr and friends
        getter = getattr(value, "get_secret_value", None)
        raw = getter() if callable(getter) else value
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        text = str(raw)
        if len(text) >= _MIN_SECRET_LEN:
            out.add(text)
    # longest first so a secret that contains another one is masked whole
    return sorted(out, key=len, reverse=True)


def redact(text: str, secrets: Iterable[Any] | Mapping[str, Any] | None) -> str:
    """Mask every known secret value (and bearer/basic credentials) in ``text``."""
    if not text:
        return text
    for value in _secret_values(secrets):
        text = text.replace(value, REDACTED)
    # Authorization headers echoed back by servers often carry tokens we were never told about.
    return re.sub(
        r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}", lambda m: f"{m.group(1)} {REDACTED}", text
    )


def excerpt(
    body: str | bytes | None,
    secrets: Iterable[Any] | Mapping[str, Any] | None = None,
    limit: int = EXCERPT_LIMIT,
) -> str | None:
    """Return a redacted, single-line excerpt of at most ``limit`` characters."""
    if body is None:
        return None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    text = redact(text, secrets)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


class ExportError(Exception):
    """Base class of everything raised by :mod:`rossflow.export`."""


class ConfigError(ExportError, ValueError):
    """The pipeline configuration is invalid; ``problems`` lists every issue found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        full = message
        if self.problems:
            full += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(full)


class ConditionError(ConfigError):
    """A condition expression is syntactically invalid or uses a forbidden construct."""


class StepError(ExportError):
    """A pipeline step failed for one annotation.

    Carries enough context to produce an operator-readable message without log diving.
    """

    kind = "step failed"

    def __init__(
        self,
        reason: str,
        *,
        step: str | None = None,
        target: str | None = None,
        http_status: int | None = None,
        reply: str | bytes | None = None,
        secrets: Iterable[Any] | Mapping[str, Any] | None = None,
        retryable: bool = False,
        annotation_id: int | None = None,
    ) -> None:
        self.reason = redact(reason, secrets)
        self.step = step
        self.target = target
        self.http_status = http_status
        self.excerpt = excerpt(reply, secrets)
        self.retryable = retryable
        self.annotation_id = annotation_id
        self.delivery: str | None = None  # "uncertain" | "not_delivered" (see mark_delivery)
        self.attempts: tuple[str, ...] = ()
        super().__init__(self.message())

    @property
    def uncertain(self) -> bool:
        """The target may have acted on the request although the step failed."""
        return self.delivery == "uncertain"

    def mark_delivery(self, *, uncertain: bool, attempts: Iterable[str]) -> StepError:
        """Say whether a failed delivery may have been processed, listing the attempts."""
        self.delivery = "uncertain" if uncertain else "not_delivered"
        self.attempts = tuple(attempts)
        self.args = (self.message(),)
        return self

    def with_step(self, step: str) -> StepError:
        """Attach the step name when the error was raised by a helper unaware of it."""
        if self.step is None:
            self.step = step
            self.args = (self.message(),)
        return self

    def message(self) -> str:
        """One line an operator can act on: what failed, where, and what the peer said."""
        parts = []
        if self.step:
            parts.append(f"[{self.step}]")
        if self.delivery == "uncertain":
            parts.append(UNCERTAIN_NOTE + ".")
        elif self.delivery == "not_delivered":
            parts.append(NOT_DELIVERED_NOTE + ":")
        parts.append(self.reason)
        details = []
        if self.target:
            details.append(f"target={self.target}")
        if self.http_status is not None:
            details.append(f"HTTP {self.http_status}")
        if self.annotation_id is not None:
            details.append(f"annotation={self.annotation_id}")
        if details:
            parts.append(f"({', '.join(details)})")
        if self.attempts:
            listed = "; ".join(f"{i}) {a}" for i, a in enumerate(self.attempts, 1))
            parts.append(f"- attempts: {listed}")
        if self.excerpt:
            parts.append(f"- reply: {self.excerpt}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Serialisable form for run reports and annotation messages."""
        return {
            "kind": type(self).__name__,
            "step": self.step,
            "reason": self.reason,
            "target": self.target,
            "http_status": self.http_status,
            "excerpt": self.excerpt,
            "retryable": self.retryable,
            "delivery": self.delivery,
            "attempts": list(self.attempts),
            "message": self.message(),
        }


class TemplateRenderError(StepError):
    """A Jinja template failed to compile or render (names template key and line)."""

    def __init__(
        self,
        reason: str,
        *,
        template_key: str,
        lineno: int | None = None,
        step: str | None = None,
    ) -> None:
        self.template_key = template_key
        self.lineno = lineno
        where = f"template '{template_key}'"
        if lineno is not None:
            where += f" line {lineno}"
        super().__init__(f"{where}: {reason}", step=step)


class PlaceholderError(StepError):
    """A placeholder (``@{x}``, ``{secret.x}``, ``$OPERATOR$`` ...) could not be resolved."""


class ExtractionError(StepError):
    """A value could not be extracted from a stored reply (names rule and path)."""


class EvaluationFailed(StepError):
    """An evaluate step decided that the export failed (Rossum's ``show_error``)."""

    def __init__(self, reason: str, *, step: str | None = None, level: str = "error") -> None:
        self.level = level
        super().__init__(reason, step=step)


class ConditionEvalError(StepError):
    """A valid condition failed at run time (e.g. comparing text with a number)."""


class FilenameError(StepError):
    """A filename/directory template is invalid or would escape its directory."""


class DeliveryError(StepError):
    """Delivery to a target (HTTP, SFTP, S3) failed; raised by the engine, defined here."""
