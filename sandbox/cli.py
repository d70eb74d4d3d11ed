"""``rossflow sandbox``: run the Rossum-compatible sandbox in the foreground."""

from __future__ import annotations

import argparse
import os
import sys

from rossflow.localstack.uvicorn_thread import PortInUseError, UvicornThread
from sandbox.app import create_app
from sandbox.config import DEFAULT_PASSWORD, DEFAULT_USERNAME, SandboxConfig
from sandbox.seeding import QUEUE_AUTO_EXPORT_ID, QUEUE_CONFIRMED_ID, SCHEMA_ID


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rossflow sandbox",
        description="Local Rossum-compatible API server (state kept in a SQLite file).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--db",
        default=".rossflow/sandbox.db",
        help="SQLite file (':memory:' for a throwaway instance)",
    )
    parser.add_argument(
        "--extraction-delay",
        type=float,
        default=1.0,
        help="seconds between upload and the end of simulated extraction",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        help="global requests/s limit (429 + Retry-After); off by default",
    )
    return parser


def run(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.db != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    config = SandboxConfig(
        db=args.db, extraction_delay_s=args.extraction_delay, rate_limit_per_s=args.rate_limit
    )
    app = create_app(config)
    try:
        server = UvicornThread(
            app, args.host, args.port, name="rossum-sandbox", log_level="warning"
        )
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    config.public_base_url = f"http://{host}:{server.port}/api"
    box = app.sandbox
    queues = [
        box.store.get("queues", QUEUE_CONFIRMED_ID),
        box.store.get("queues", QUEUE_AUTO_EXPORT_ID),
    ]
    schema = box.store.get("schemas", SCHEMA_ID) or {}
    lines = [
        "Rossum sandbox",
        f"  API base URL : {config.public_base_url}",
        f"  login        : {DEFAULT_USERNAME} / {DEFAULT_PASSWORD}"
        "  (POST /v1/auth/login, or HTTP Basic on uploads/export)",
        f"  database     : {args.db}",
        f"  schema {SCHEMA_ID}     : {schema.get('name')} (invoice fields, line_items table)",
    ]
    for q in queues:
        if q:
            lines.append(
                f"  queue {q['id']}      : {q['name']} (use_confirmed_state="
                f"{str(q['use_confirmed_state']).lower()})"
            )
    lines += [
        f"  admin        : http://{host}:{server.port}/_sandbox/(faults|seed|stats|settings|"
        "hook_deliveries|confirm_all)",
        f"  extraction   : {config.extraction_delay_s}s after upload; text 'Label: value' lines",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run())
