"""``rossflow render``: preview a pipeline against one annotation, delivering nothing.

The annotation comes from Rossum (or the sandbox) by id, or from a saved export JSON (a file
holding one export item, or a ``{"results": [...]}`` page). Every step is previewed: templates
are rendered; REST/SOAP steps show their auth token request and the request exactly as it
would be sent (method, URL, headers, body bytes) with secrets redacted; values that only a
reply could provide (extracted by later steps) appear as ``<unresolved …>`` markers; file
storage steps list the paths they would write. Every loader warning is printed first, and a
pipeline that cannot be loaded is reported in one line, in the user's own key names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from rossflow.rossum import RossumClient, RossumError

from .config import (
    AuthConfig,
    CodeStep,
    EvaluateStep,
    ExtractStep,
    FileStorageStep,
    PipelineConfig,
    RestStep,
    RpStepBase,
    TemplateStep,
)
from .context import ExportContext, build_context
from .errors import ConfigError, StepError, redact
from .extract import build_response_record
from .loading import load_pipeline
from .placeholders import required_secrets
from .rest_request import (
    PreparedRequest,
    prepare_auth_request,
    prepare_request,
    rest_gate,
)
from .rp.preview import preview_rp_step
from .steps import (
    plan_file_storage,
    run_evaluate_step,
    run_template_step,
    step_enabled,
)

__all__ = ["preview", "run", "unresolved"]


def unresolved(what: str, producer: str) -> str:
    """Marker shown where a value only exists once ``producer`` got its reply."""
    return f"<unresolved {what}: from the reply of {producer!r}>"


def _needed_secrets(config: PipelineConfig) -> set[str]:
    names: set[str] = set()
    for step in config.steps:
        if isinstance(step, RestStep):
            names |= required_secrets(step.request.model_dump(mode="json"))
            auth = config.auths.get(step.auth) if isinstance(step.auth, str) else step.auth
            if isinstance(auth, AuthConfig):
                names |= required_secrets(auth.model_dump(mode="json"))
                names.discard(auth.cache_as)
    return names


def _request_entry(label: str, req: PreparedRequest, hide: list[str]) -> dict[str, Any]:
    if req.content is not None:
        body = req.content
    elif req.json is not None:
        body = json.dumps(req.json, ensure_ascii=False).encode()
    elif req.data is not None:
        from urllib.parse import urlencode

        body = urlencode(req.data).encode()
    else:
        body = b""
    url = req.url
    if req.params:
        from urllib.parse import urlencode

        url += ("&" if "?" in url else "?") + urlencode(req.params)
    return {
        "label": label,
        "method": req.method,
        "url": redact(url, hide),
        "headers": {k: redact(v, hide) for k, v in req.headers.items()},
        "body": redact(body.decode("utf-8", "replace"), hide).encode("utf-8")
        if hide and _is_text(body)
        else body,
    }


def _is_text(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def preview(
    config: PipelineConfig,
    item: Mapping[str, Any],
    *,
    original: bytes | None = None,
    secrets: Mapping[str, Any] | None = None,
    queue_id: int | None = None,
) -> list[dict[str, Any]]:
    """What each step would do for one export item; one entry per step.

    Secrets not supplied become ``<secret.x>`` markers (listed in the entry's ``missing``);
    supplied ones are redacted from everything shown.
    """
    given = {
        k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
        for k, v in (secrets or {}).items()
    }
    hide = [str(v) for v in given.values() if v]
    base_secrets: dict[str, Any] = dict(given)
    missing = sorted(_needed_secrets(config) - set(given))
    for name in missing:
        base_secrets[name] = f"<secret.{name}>"
    ctx: ExportContext = build_context(item, original_file=(lambda: original or b""))
    out: list[dict[str, Any]] = []
    from_replies = False  # set once a step's reply would feed later steps
    steps = config.steps_for_queue(queue_id)
    for step in config.topological_order():
        if step not in steps:
            out.append(
                {
                    "step": step.name,
                    "type": step.type,
                    "note": f"not in the pipeline of queue {queue_id} (queues {step.queues})",
                }
            )
    for step in steps:
        entry: dict[str, Any] = {"step": step.name, "type": step.type}
        step_secrets = {
            **base_secrets,
            **{k: v.get_secret_value() for k, v in step.secrets.items()},
        }
        hide_here = hide + [v.get_secret_value() for v in step.secrets.values()]
        try:
            if not step_enabled(step, ctx):
                entry["note"] = "skipped: `when` is false"
            elif isinstance(step, TemplateStep):
                ctx, files = run_template_step(step, ctx)
                entry["files"] = [
                    {"key": f.key, "content_type": f.content_type, "content": f.content}
                    for f in files
                ]
            elif isinstance(step, RestStep):
                ctx = _preview_rest(config, step, ctx, step_secrets, hide_here, entry)
                from_replies = True
            elif isinstance(step, ExtractStep):
                values = {
                    rule.target_schema_id: unresolved(
                        rule.target_schema_id,
                        source.source_step or f"reference {source.source_reference_key}",
                    )
                    for source in step.sources
                    for rule in source.extract_rules
                }
                ctx = ctx.with_values(values)
                entry["note"] = "extracts from replies: " + ", ".join(sorted(values))
            elif isinstance(step, EvaluateStep):
                if from_replies:
                    entry["note"] = (
                        f"not evaluated: `{step.expression}` reads values that only replies provide"
                    )
                else:
                    outcome = run_evaluate_step(step, ctx)
                    entry["note"] = "passes" if outcome.passed else f"would fail: {outcome.message}"
            elif isinstance(step, FileStorageStep):
                entry["uploads"] = _preview_files(step, ctx)
            elif isinstance(step, CodeStep):
                entry["note"] = (
                    f"calls {step.function} with the hook payload (not run in a preview)"
                    + (f"; replaces hook {step.replaces_hook!r}" if step.replaces_hook else "")
                )
                for key in step.produces:
                    ctx = ctx.with_reference(key, unresolved(key, step.name))
            elif isinstance(step, RpStepBase):  # Request Processor: offline, with markers
                entry.update(preview_rp_step(step, ctx, secrets=step_secrets))
            else:  # clean
                entry["note"] = "purges artefacts of earlier runs"
        except StepError as exc:
            entry["error"] = redact(exc.with_step(step.name).message(), hide_here)
        except Exception as exc:  # a preview reports, it never ends in a traceback
            entry["error"] = redact(f"internal error: {type(exc).__name__}: {exc}", hide_here)
        if missing:
            entry["missing_secrets"] = missing
        out.append(entry)
    return out


def _preview_rest(
    config: PipelineConfig,
    step: RestStep,
    ctx: ExportContext,
    secrets: dict[str, Any],
    hide: list[str],
    entry: dict[str, Any],
) -> ExportContext:
    if not rest_gate(step, ctx, secrets=secrets):
        entry["note"] = f"skipped: condition {step.condition!r} is empty or false"
        return ctx
    auth = config.auths.get(step.auth) if isinstance(step.auth, str) else step.auth
    requests = []
    if isinstance(auth, AuthConfig):
        token_req = prepare_auth_request(auth, secrets=secrets, step=step.name, ctx=ctx)
        requests.append(_request_entry("auth token request", token_req, hide))
        secrets = {**secrets, auth.cache_as: f"<token from {token_req.url}>"}
    req = prepare_request(step, ctx, secrets=secrets, auth=auth)
    requests.append(_request_entry("request", req, hide))
    entry["requests"] = requests
    marker = unresolved("reply", step.name)
    record = build_response_record(0, [], marker.encode(), url=req.url)
    ctx = ctx.with_response(step.name, record)
    if step.response_headers_reference_key:
        ctx = ctx.with_reference(
            step.response_headers_reference_key, {"status_code": marker, "headers": {}}
        )
    if step.response_payload_reference_key:
        ctx = ctx.with_reference(step.response_payload_reference_key, marker)
    return ctx


def _preview_files(step: FileStorageStep, ctx: ExportContext) -> list[dict[str, Any]]:
    creds = step.credentials or {}
    where = step.target or (
        f"{creds.get('type', step.type)}://{creds.get('username', '')}@{creds.get('host', '?')}"
        f":{creds.get('port', 22)}"
        if step.type == "sftp"
        else f"s3://{creds.get('bucket_name', '?')}"
    )
    counters: dict[str, int] = {}

    def counter(name: str) -> int:
        counters[name] = counters.get(name, 0) + 1
        return counters[name] - 1

    planned = plan_file_storage(step, ctx, counter=counter)
    return [
        {
            "target": where,
            "path": p.path,
            "object": p.object_type,
            "content_type": p.content_type,
            "collision": p.collision,
        }
        for p in planned
    ]


def _load_item(path: Path, index: int) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "results" in data:
        data = data["results"]
    if isinstance(data, list):
        return dict(data[index])
    return dict(data)


async def _fetch_item(args: argparse.Namespace) -> tuple[dict[str, Any], bytes | None, int]:
    async with RossumClient(
        args.rossum_url,
        token=os.environ.get("ROSSUM_TOKEN") if not args.username else None,
        username=args.username,
        password=os.environ.get("ROSSUM_PASSWORD", args.password),
        rate_limit_per_s=None,
    ) as client:
        annotation = await client.get_annotation(args.annotation)
        queue_id = int(str(annotation["queue"]).rstrip("/").rsplit("/", 1)[-1])
        items = await client.export(queue_id, ids=[args.annotation])
        if not items:
            raise ConfigError(
                f"annotation {args.annotation} is not exportable from queue {queue_id}"
            )
        original = await client.download_document(annotation["document"])
        return items[0], original, queue_id


def _read_secrets(path: Path) -> dict[str, Any]:
    """``--secrets FILE``: a JSON/YAML mapping, or ``NAME=value`` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read secrets file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, str) or data is None:
        data = {}
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                data[key.strip()] = value.strip()
    if not isinstance(data, Mapping):
        raise ConfigError(f"secrets file {path}: expected a mapping of secret names to values")
    return {str(k): "" if v is None else str(v) for k, v in data.items()}


def one_line(exc: ConfigError) -> str:
    """A load error on one line: the summary and every problem, separated by ``; ``."""
    problems = getattr(exc, "problems", None) or []
    head = str(exc).splitlines()[0] if str(exc) else "invalid pipeline"
    return head + (": " + "; ".join(problems) if problems else "")


def _code_steps(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, func = value.rpartition("=")
        if not sep or not name or not func:
            raise ConfigError(f"--code-step {value!r}: expected 'HOOK NAME=module:function'")
        out[name] = func
    return out


def _print_entry(entry: dict[str, Any], out_dir: Path | None) -> None:
    print(f"== {entry['step']} ({entry['type']})")
    if "error" in entry:
        print(f"   ERROR: {entry['error']}")
    if "note" in entry:
        print(f"   {entry['note']}")
    for req in entry.get("requests", []):
        print(f"-- {req['label']}: {req['method']} {req['url']}")
        for key, value in req["headers"].items():
            print(f"   {key}: {value}")
        body: bytes = req["body"]
        if body:
            print(f"   body ({len(body)} bytes):")
            if _is_text(body):
                sys.stdout.write(body.decode("utf-8") + "\n")
            else:
                print(f"   <{len(body)} binary bytes>")
    for up in entry.get("uploads", []):
        print(
            f"-- upload {up['object']} to {up['target']}{up['path']} "
            f"({up['content_type']}, on collision: {up['collision']})"
        )
    for f in entry.get("files", []):
        print(f"-- {f['key']} ({f['content_type']})")
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / f["key"]
            target.write_bytes(f["content"])
            print(f"   written to {target}")
        else:
            sys.stdout.write(f["content"].decode("utf-8", "replace") + "\n")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rossflow render",
        description="Preview every step of a pipeline for one annotation (delivers nothing).",
    )
    parser.add_argument("pipeline", type=Path, help="pipeline file (native YAML or v1 hooks)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--annotation", type=int, help="annotation id to fetch from Rossum")
    source.add_argument("--from-json", type=Path, help="saved export JSON (item or page)")
    parser.add_argument("--index", type=int, default=0, help="item of a saved page (default 0)")
    parser.add_argument("--queue", type=int, help="preview the chain of this queue (hook queues)")
    parser.add_argument(
        "--secrets", type=Path, help="JSON/YAML mapping (or NAME=value lines) of {secret.x} values"
    )
    parser.add_argument(
        "--code-step",
        action="append",
        default=[],
        metavar="HOOK=module:function",
        help="map a serverless hook to a Python function (repeatable)",
    )
    parser.add_argument("--rossum-url", default="http://127.0.0.1:8765/api")
    parser.add_argument("--username", default="admin@rossflow.local")
    parser.add_argument("--password", default="rossflow", help="or ROSSUM_PASSWORD")
    parser.add_argument("--out", type=Path, help="write rendered files into this directory")
    args = parser.parse_args(argv)

    try:
        config = load_pipeline(args.pipeline, code_steps=_code_steps(args.code_step) or None)
        secrets = _read_secrets(args.secrets) if args.secrets else {}
    except ConfigError as exc:
        print(f"rossflow render: {args.pipeline}: {one_line(exc)}", file=sys.stderr)
        return 2
    for warning in config.warnings:
        print(f"WARNING: {warning}")
    original: bytes | None = None
    queue_id = args.queue
    try:
        if args.from_json:
            item = _load_item(args.from_json, args.index)
        else:
            item, original, fetched_queue = asyncio.run(_fetch_item(args))
            queue_id = queue_id or fetched_queue
    except (OSError, ValueError, IndexError, ConfigError, RossumError, httpx.HTTPError) as exc:
        print(f"rossflow render: cannot read the annotation: {exc}", file=sys.stderr)
        return 2
    chains = sorted({q for s in config.steps for q in s.queues})
    if queue_id is None and len(chains) > 1:
        print(
            f"WARNING: this file holds the chains of queues {chains}; every step is previewed "
            "(pass --queue ID for the chain of one queue)"
        )
    results = preview(config, item, original=original, secrets=secrets, queue_id=queue_id)
    missing = next((e["missing_secrets"] for e in results if e.get("missing_secrets")), [])
    if missing:
        print(
            "WARNING: secrets not supplied (shown as <secret.x>; pass --secrets FILE): "
            + ", ".join(missing)
        )
    failed = False
    for entry in results:
        failed = failed or "error" in entry
        _print_entry(entry, args.out)
    return 1 if failed else 0
