"""``rossflow hooks pull``: turn the export hooks of a Rossum queue into a pipeline file.

    rossflow hooks pull --queue 1260388 --out coupa.hooks.json

Reads the hooks attached to the queue through the API (Rossum or the sandbox), keeps those
that run on the Export event, and writes them verbatim in a ``{"hooks": [...]}`` file that
``rossflow render`` and the export flow load as they are. Secret values are never written
(the API does not return them, and any ``secrets`` key is dropped); the file lists under
``pipeline_secrets`` the ``{secret.x}`` names to put in a Pipeline Secrets block. Serverless
(code) hooks are mapped to ``null`` in ``code_steps`` - left out, with a warning on every
load - until the user maps them to a Python function.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from rossflow.export.errors import ConfigError
from rossflow.export.loading import load_pipeline
from rossflow.export.placeholders import required_secrets
from rossflow.export.rossum_hooks import is_code_hook, is_export_hook
from rossflow.rossum import RossumClient, RossumError

__all__ = ["build_hooks_file", "pull", "run"]

# Token caches Rossum itself writes into hook secrets (not something the user supplies).
_CACHE_SECRETS = {"access_token"}


def build_hooks_file(
    hooks: list[Mapping[str, Any]],
    *,
    queue_id: int,
    source: str,
    secret_keys: Mapping[int, list[str]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The pipeline file for a queue's hooks, and notes for the operator."""
    notes: list[str] = []
    kept = []
    for hook in sorted(hooks, key=lambda h: int(h.get("id") or 0)):
        if not is_export_hook(hook):
            notes.append(f"hook {hook.get('name')!r} does not run on the Export event: not written")
            continue
        kept.append({k: v for k, v in hook.items() if k != "secrets"})
    names: set[str] = set()
    for hook in kept:
        settings = hook.get("settings") or {}
        names |= required_secrets(settings)
        if isinstance(settings, Mapping) and settings.get("auth"):
            names -= _CACHE_SECRETS
        for key in (secret_keys or {}).get(int(hook.get("id") or 0), []):
            if key not in _CACHE_SECRETS and not key.startswith("_request_processor_token_cache"):
                names.add(key)
    code_steps: dict[str, Any] = {}
    for hook in kept:
        if is_code_hook(hook) and not set(hook.get("settings") or {}) <= {"condition", "message"}:
            code_steps[str(hook.get("name"))] = None
            notes.append(
                f"hook {hook.get('name')!r} is a serverless function: map it in code_steps to "
                "'package.module:function' (it is left out until you do)"
            )
    data = {
        "name": f"queue-{queue_id}-export",
        "description": f"Export hooks of queue {queue_id}, pulled from {source}",
        "source": {
            "rossum_url": source,
            "queue": queue_id,
            "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "queue": queue_id,
        "pipeline_secrets": sorted(names),
        "code_steps": code_steps,
        "hooks": kept,
    }
    return data, notes


async def pull(
    client: RossumClient, queue_id: int
) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Hooks attached to ``queue_id`` and the names of the secrets each one holds."""
    await client.get_queue(queue_id)  # a clear 404 for a wrong queue id
    hooks = await client.list_hooks(queue=queue_id)
    keys: dict[int, list[str]] = {}
    for hook in hooks:
        try:
            found = await client.get_json(f"/v1/hooks/{hook['id']}/secrets_keys")
        except RossumError:
            continue  # older APIs: fall back to the {secret.x} names in the settings
        if isinstance(found, list):
            keys[int(hook["id"])] = [str(k) for k in found]
    return hooks, keys


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rossflow hooks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pull", help="write the export hooks of a queue as a pipeline file")
    p.add_argument("--queue", type=int, required=True, help="Rossum queue id")
    p.add_argument("--out", type=Path, help="file to write (default: stdout)")
    p.add_argument(
        "--rossum-url", default=os.environ.get("ROSSUM_URL", "http://127.0.0.1:8765/api")
    )
    p.add_argument("--username", default=os.environ.get("ROSSUM_USERNAME"))
    p.add_argument("--password", default=None, help="or ROSSUM_PASSWORD")
    args = parser.parse_args(argv)

    async def fetch() -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
        async with RossumClient(
            args.rossum_url,
            token=os.environ.get("ROSSUM_TOKEN") if not args.username else None,
            username=args.username,
            password=args.password or os.environ.get("ROSSUM_PASSWORD"),
            rate_limit_per_s=None,
        ) as client:
            return await pull(client, args.queue)

    try:
        hooks, keys = asyncio.run(fetch())
    except (RossumError, httpx.HTTPError, ValueError) as exc:
        print(f"rossflow hooks pull: queue {args.queue}: {exc}", file=sys.stderr)
        return 2
    data, notes = build_hooks_file(
        hooks, queue_id=args.queue, source=args.rossum_url, secret_keys=keys
    )
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if data["pipeline_secrets"]:
        print(
            "note: put these keys in a Pipeline Secrets block: "
            + ", ".join(data["pipeline_secrets"]),
            file=sys.stderr,
        )
    if not data["hooks"]:
        print(f"rossflow hooks pull: queue {args.queue} has no export hooks", file=sys.stderr)
        return 1
    try:
        config = load_pipeline(data)
    except ConfigError as exc:
        from rossflow.export.preview import one_line

        print(
            f"rossflow hooks pull: the pulled hooks do not load: {one_line(exc)}", file=sys.stderr
        )
        return 1
    print(
        f"wrote {len(data['hooks'])} hook(s) as {len(config.steps)} step(s)"
        + (f" to {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0
