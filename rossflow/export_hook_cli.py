"""``rossflow export-hook`` command line: loads the Rossum Credentials block (the Prefect layer)
and calls :func:`rossflow.webhook.register.register_export_hook`, which holds the logic."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rossflow.webhook.register import (
    DEFAULT_NAME,
    _read_secret,
    _write_secret,
    register_export_hook,
)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rossflow export-hook",
        description="Register the annotation_content.export webhook (export-event mode) for a "
        "queue; never creates a duplicate.",
    )
    parser.add_argument("--queue", type=int, required=True, help="Rossum queue id")
    parser.add_argument("--url", required=True, help="receiver URL, e.g. https://host/rossum")
    parser.add_argument(
        "--secret-file",
        default=".rossflow/hook-secret",
        help="where the hook secret is read from / written to (mode 0600)",
    )
    parser.add_argument("--timeout", type=int, default=30, help="hook timeout_s (max 60)")
    parser.add_argument("--retry-count", type=int, default=4, help="hook retry_count (0-4)")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--rossum", default="rossum", help="Rossum Credentials block name")
    args = parser.parse_args(argv)
    if not 0 <= args.retry_count <= 4 or not 1 <= args.timeout <= 60:
        parser.error("--retry-count must be 0-4 and --timeout 1-60 (Rossum's limits)")
    secret_file = Path(args.secret_file)

    async def main() -> int:
        from blocks import RossumCredentials

        creds = await RossumCredentials.aload(args.rossum)
        async with creds.get_client() as client:
            hook, what, new_secret = await register_export_hook(
                client,
                queue_id=args.queue,
                url=args.url,
                secret=_read_secret(secret_file),
                timeout_s=args.timeout,
                retry_count=args.retry_count,
                name=args.name,
            )
        if new_secret and not _read_secret(secret_file):
            _write_secret(secret_file, new_secret)
            print(f"rossflow export-hook: secret written to {secret_file}")
        print(
            f"rossflow export-hook: hook {hook.get('id')} {what} for queue {args.queue} → "
            f"{args.url}; run `rossflow webhook --secret-file {secret_file} --export-queues "
            f"{args.queue}` and `rossflow serve --event-queues {args.queue} ...`"
        )
        return 0

    try:
        return asyncio.run(main())
    except Exception as exc:  # user-facing: no traceback for a wrong block name or queue id
        print(f"rossflow export-hook: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
