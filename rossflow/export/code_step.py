"""Custom code steps: a Python function in place of a Rossum serverless hook.

A chain pasted from Rossum may hold serverless (code) hooks, e.g. Coupa's "Handle Coupa
Responses". rossflow cannot run Rossum's hosted code, so the user maps the hook to a function
of their own (``code_steps: {"Handle Coupa Responses": "mypkg.coupa:handle"}``) and the loader
turns the hook into a ``code`` step calling it.

The function gets the payload a Rossum serverless hook gets on the export event
(``annotation`` with ``content``, ``document``, ``settings``, ``secrets``, ``action``,
``event`` …) plus ``rossflow``: ``values`` (schema id -> value, including values written by
earlier steps to fields the export leaves out), ``references`` and ``responses`` (artefacts
and REST replies of earlier steps, which Rossum keeps in document relations). It answers like
a hook::

    {"messages": [{"type": "error", "content": "...", "id": 123}],
     "operations": [{"op": "replace", "id": 123, "value": {"content": {"value": "42"}}}],
     "references": {"my_key": "text, bytes or JSON"}}     # rossflow extension

``error`` messages fail the export of that annotation; ``warning``/``info`` messages are kept;
``replace`` operations are applied to the context (later steps see the values) and written
back to Rossum; ``references`` are stored under their keys like a template output.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rossflow.export.config import CodeStep, PipelineConfig
from rossflow.export.context import ExportContext
from rossflow.export.errors import ConfigError, EvaluationFailed, StepError
from rossflow.rossum import RossumError

__all__ = [
    "CodeOutcome",
    "check_code_steps",
    "hook_payload",
    "load_function",
    "run_code_step",
    "run_code_step_async",
]


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` from the import path."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"function {spec!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"function {spec!r}: cannot import {module_name!r} ({exc})") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"function {spec!r}: {module_name!r} has no function {attr!r}")
    return func  # type: ignore[no-any-return]


def check_code_steps(config: PipelineConfig) -> list[str]:
    """Load-time check that every code step's function can be imported."""
    problems = []
    for step in config.steps:
        if isinstance(step, CodeStep):
            try:
                load_function(step.function)
            except ConfigError as exc:
                where = (
                    f"hook {step.replaces_hook!r} (code_steps)"
                    if step.replaces_hook
                    else f"step {step.name!r}"
                )
                problems.append(f"{where}: {exc}; put the module on the import path or fix it")
    return problems


def _plain(value: Any) -> Any:
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else value


def hook_payload(
    step: CodeStep,
    ctx: ExportContext,
    *,
    secrets: Mapping[str, Any] | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """The payload a Rossum serverless hook gets on ``annotation_content.export``."""
    annotation = dict(ctx.payload["annotation"])
    annotation["content"] = _api_content(ctx.content)
    return {
        "request_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "base_url": base_url,
        "hook": step.replaces_hook or step.name,
        "settings": dict(step.settings),
        "secrets": {k: _plain(v) for k, v in (secrets or {}).items()},
        "action": "export",
        "event": "annotation_content",
        "annotation": annotation,
        "document": dict(ctx.payload["document"]),
        "rossflow": {
            "step": step.name,
            "values": dict(ctx.values),
            "references": dict(ctx.references),
            "responses": dict(ctx.responses),
        },
    }


_DP_CONTENT_KEYS = ("value", "normalized_value", "page", "position", "rir_confidence")


def _api_content(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Content as the API (and so a hook payload) shapes it: a datapoint's value lives in
    ``content`` (``{"value": …}``); the export format puts it on the node itself."""
    out = []
    for node in nodes:
        node = dict(node)
        if node.get("category") == "datapoint" and not isinstance(node.get("content"), Mapping):
            node["content"] = {k: node.pop(k) for k in _DP_CONTENT_KEYS if k in node}
            node["content"].setdefault("value", "")
        if isinstance(node.get("children"), list):
            node["children"] = _api_content(node["children"])
        out.append(node)
    return out


@dataclass
class CodeOutcome:
    """What a code step answered, sorted out."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    references: dict[str, Any] = field(default_factory=dict)

    def raise_if_failed(self, step: str) -> None:
        """An ``error`` message fails the export, as it does in Rossum."""
        if self.errors:
            raise EvaluationFailed("; ".join(self.errors), step=step)


def _schema_ids(nodes: list[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node.get("id"), int) and node.get("schema_id"):
            out[node["id"]] = str(node["schema_id"])
        stack.extend(node.get("children") or [])
    return out


def _read_answer(step: CodeStep, ctx: ExportContext, answer: Any) -> CodeOutcome:
    if answer is None:
        answer = {}
    if not isinstance(answer, Mapping):
        raise StepError(
            f"function {step.function} returned {type(answer).__name__}, expected a hook "
            "answer {'messages': [...], 'operations': [...]}",
            step=step.name,
        )
    outcome = CodeOutcome()
    for message in answer.get("messages") or []:
        if not isinstance(message, Mapping):
            raise StepError(
                f"function {step.function}: message {message!r} is not an object "
                "({'type': 'error'|'warning'|'info', 'content': '...'})",
                step=step.name,
            )
        kind = str(message.get("type", "info")).lower()
        text = str(message.get("content", ""))
        {"error": outcome.errors, "warning": outcome.warnings}.get(kind, outcome.info).append(text)
    ids = _schema_ids(ctx.content)
    for op in answer.get("operations") or []:
        if not isinstance(op, Mapping):
            raise StepError(f"function {step.function}: operation {op!r} is not an object")
        outcome.operations.append(dict(op))
        if op.get("op") == "replace" and op.get("id") in ids:
            value = ((op.get("value") or {}).get("content") or {}).get("value")
            outcome.values[ids[op["id"]]] = value
    refs = answer.get("references") or {}
    if not isinstance(refs, Mapping):
        raise StepError(f"function {step.function}: 'references' must be an object")
    undeclared = sorted(set(refs) - set(step.produces))
    if undeclared:
        raise StepError(
            f"function {step.function} set reference keys {undeclared} that the step does not "
            "declare in 'produces'",
            step=step.name,
        )
    outcome.references = dict(refs)
    return outcome


def _apply(ctx: ExportContext, outcome: CodeOutcome) -> ExportContext:
    if outcome.values:
        ctx = ctx.with_values(outcome.values)
    for key, value in outcome.references.items():
        ctx = ctx.with_reference(key, value)
    return ctx


def run_code_step(
    step: CodeStep,
    ctx: ExportContext,
    *,
    secrets: Mapping[str, Any] | None = None,
    base_url: str | None = None,
) -> tuple[ExportContext, CodeOutcome]:
    """Call the function (sync; a coroutine function is run to completion)."""
    func = load_function(step.function)
    payload = hook_payload(step, ctx, secrets=secrets, base_url=base_url)
    answer = func(payload)
    if inspect.isawaitable(answer):
        answer = asyncio.run(_await(answer))
    outcome = _read_answer(step, ctx, answer)
    return _apply(ctx, outcome), outcome


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def run_code_step_async(
    step: CodeStep,
    ctx: ExportContext,
    *,
    secrets: Mapping[str, Any] | None = None,
    base_url: str | None = None,
) -> tuple[ExportContext, CodeOutcome]:
    """Engine entry: async functions are awaited, sync ones run in a worker thread."""
    func = load_function(step.function)
    payload = hook_payload(step, ctx, secrets=secrets, base_url=base_url)
    if inspect.iscoroutinefunction(func):
        answer = await func(payload)
    else:
        answer = await asyncio.to_thread(func, payload)
    try:
        outcome = _read_answer(step, ctx, answer)
    except StepError as exc:
        raise exc.with_step(step.name) from exc
    return _apply(ctx, outcome), outcome


async def run_for_engine(engine: Any, step: CodeStep, doc: Any) -> bool:
    """The engine's code-step branch: run, keep messages, write operations back.

    A dry run does not call the function (it may reach other systems); it says so.
    """
    if engine.dry_run:
        doc.warnings.append(f"{step.name}: code step {step.function} not run in a dry run")
        return False
    secrets = engine._secrets_for(step)
    base_url = getattr(engine.client, "base_url", None)
    doc.ctx, outcome = await run_code_step_async(
        step, doc.ctx, secrets=secrets, base_url=str(base_url) if base_url else None
    )
    doc.warnings.extend(outcome.warnings)
    outcome.raise_if_failed(step.name)
    if outcome.operations:
        try:
            await engine.client.content_operations(doc.annotation_id, outcome.operations)
        except RossumError as exc:
            raise StepError(
                f"writing the operations of {step.function} back to Rossum failed: {exc}",
                step=step.name,
                target="rossum",
            ) from exc
    return True
