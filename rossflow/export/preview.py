"""``rossflow render``: preview a pipeline against one annotation, delivering nothing.

The annotation comes from Rossum (or the sandbox) by id, or from a saved export JSON (a file
holding one export item, or a ``{"results": [...]}`` page). Every template step is rendered and
every REST step's request is shown as it would be sent (header values and secrets masked).
Steps that need a reply from an earlier REST call are reported as such, not guessed.
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

from rossflow.rossum import RossumClient

from .config import PipelineConfig, RestStep, TemplateStep
from .context import ExportContext, build_context
from .errors import StepError, redact
from .loading import load_pipeline
from .steps import prepare_request, rest_gate, run_template_step, step_enabled


def preview(
    config: PipelineConfig,
    item: Mapping[str, Any],
    *,
    original: bytes | None = None,
    secrets: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Render what each step would produce for one export item; returns one entry per step."""
    secrets = dict(secrets or {})
    ctx: ExportContext = build_context(item, original_file=(lambda: original or b""))
    out: list[dict[str, Any]] = []
    blocked: set[str] = set()
    for step in config.topological_order():
        entry: dict[str, Any] = {"step": step.name, "type": step.type}
        if set(step.after) & blocked:
            entry["note"] = "not previewed: depends on a REST reply or on a step that failed above"
            blocked.add(step.name)
            out.append(entry)
            continue
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
                if not rest_gate(step, ctx, secrets=secrets):
                    entry["note"] = "skipped: condition is empty or false"
                else:
                    all_secrets = {**secrets, **step.secrets}
                    for name in ("access_token",):
                        all_secrets.setdefault(name, "<token from auth>")
                    req = prepare_request(step, ctx, secrets=all_secrets)
                    entry["request"] = req.describe()
                    body = req.content or json.dumps(req.json or req.data or {}).encode()
                    values = [
                        v.get_secret_value() if hasattr(v, "get_secret_value") else str(v)
                        for v in all_secrets.values()
                    ]
                    entry["body"] = redact(body.decode("utf-8", "replace"), values).encode()
                blocked.add(step.name)
            else:
                entry["note"] = "not run in a preview"
                blocked.add(step.name)
        except StepError as exc:
            entry["error"] = exc.with_step(step.name).message()
            blocked.add(step.name)
        out.append(entry)
    return out


def _load_item(path: Path, index: int) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "results" in data:
        data = data["results"]
    if isinstance(data, list):
        return dict(data[index])
    return dict(data)


async def _fetch_item(args: argparse.Namespace) -> tuple[dict[str, Any], bytes | None]:
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
            raise SystemExit(
                f"annotation {args.annotation} is not exportable from queue {queue_id}"
            )
        original = await client.download_document(annotation["document"])
        return items[0], original


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rossflow render",
        description="Preview a pipeline's templates and requests for one annotation.",
    )
    parser.add_argument("pipeline", type=Path, help="pipeline file (native YAML or v1 hooks)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--annotation", type=int, help="annotation id to fetch from Rossum")
    source.add_argument("--from-json", type=Path, help="saved export JSON (item or page)")
    parser.add_argument("--index", type=int, default=0, help="item of a saved page (default 0)")
    parser.add_argument("--rossum-url", default="http://127.0.0.1:8765/api")
    parser.add_argument("--username", default="admin@rossflow.local")
    parser.add_argument("--password", default="rossflow", help="or ROSSUM_PASSWORD")
    parser.add_argument("--out", type=Path, help="write rendered files into this directory")
    args = parser.parse_args(argv)

    config = load_pipeline(args.pipeline)
    original: bytes | None = None
    if args.from_json:
        item = _load_item(args.from_json, args.index)
    else:
        item, original = asyncio.run(_fetch_item(args))
    results = preview(config, item, original=original)
    failed = False
    for entry in results:
        print(f"== {entry['step']} ({entry['type']})")
        if "error" in entry:
            failed = True
            print(f"   ERROR: {entry['error']}")
        if "note" in entry:
            print(f"   {entry['note']}")
        if "request" in entry:
            print(f"   {entry['request']}")
            print(entry["body"].decode("utf-8", "replace"))
        for f in entry.get("files", []):
            print(f"-- {f['key']} ({f['content_type']})")
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                target = args.out / f["key"]
                target.write_bytes(f["content"])
                print(f"   written to {target}")
            else:
                sys.stdout.write(f["content"].decode("utf-8", "replace") + "\n")
    return 1 if failed else 0
