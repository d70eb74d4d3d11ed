"""``rossflow webhook``: run the Rossum → Prefect receiver.

    rossflow webhook --port 8787 --secret-file /run/secrets/rossum_hook
    ROSSFLOW_WEBHOOK_SECRET=… PREFECT_API_URL=http://prefect:4200/api rossflow webhook

Point the Rossum hook (``events: ["annotation_status"]``, ``config.secret`` set) at
``http://<host>:<port>/rossum``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from rossflow.localstack.uvicorn_thread import PortInUseError, UvicornThread
from rossflow.webhook.app import WebhookSettings, create_app

ENV_SECRET = "ROSSFLOW_WEBHOOK_SECRET"  # noqa: S105 - a variable name
ENV_SECRET_FILE = "ROSSFLOW_WEBHOOK_SECRET_FILE"  # noqa: S105 - a variable name


class WebhookServer:
    """The receiver served from a background thread (tests, the demo, benchmarks)."""

    def __init__(
        self,
        settings: WebhookSettings,
        host: str = "127.0.0.1",
        port: int = 0,
        emitter: Any = None,
    ) -> None:
        self.settings = settings
        self.app = create_app(settings, emitter=emitter)
        self._thread = UvicornThread(self.app, host, port, name="rossflow-webhook")

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def hook_url(self) -> str:
        """What to put in the Rossum hook's ``config.url``."""
        return self._thread.url + self.settings.path

    @property
    def port(self) -> int:
        return self._thread.port

    def counters(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/health", timeout=5).json()["counters"])

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def serve_forever(self) -> None:
        self._thread.serve_forever()

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _secrets(args: argparse.Namespace) -> list[str]:
    secrets = list(args.secret or [])
    files = list(args.secret_file or [])
    if not secrets and not files:
        if os.environ.get(ENV_SECRET):
            secrets = [s.strip() for s in os.environ[ENV_SECRET].split(",")]
        elif os.environ.get(ENV_SECRET_FILE):
            files = [os.environ[ENV_SECRET_FILE]]
    for path in files:
        secrets += [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return [s for s in secrets if s]


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rossflow webhook",
        description="Receive Rossum hook calls and emit Prefect events "
        "(rossum.annotation.status_changed).",
    )
    parser.add_argument("--host", default=os.environ.get("ROSSFLOW_WEBHOOK_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("ROSSFLOW_WEBHOOK_PORT", "8787"))
    )
    parser.add_argument(
        "--secret",
        action="append",
        help=f"hook secret (repeat to accept several while rotating); default ${ENV_SECRET} "
        "(comma-separated). Prefer --secret-file: arguments show up in `ps`.",
    )
    parser.add_argument(
        "--secret-file",
        action="append",
        help=f"file with one secret per line; default ${ENV_SECRET_FILE}",
    )
    parser.add_argument(
        "--prefect-api-url",
        default=None,
        help="Prefect API, e.g. http://127.0.0.1:4200/api (default: PREFECT_API_URL)",
    )
    parser.add_argument("--path", default="/rossum", help="route of the hook (default /rossum)")
    parser.add_argument(
        "--max-body", type=int, default=1_048_576, help="largest body in bytes (default 1 MiB)"
    )
    parser.add_argument(
        "--dedup-db",
        default=os.environ.get("ROSSFLOW_WEBHOOK_DEDUP_DB", ".rossflow/webhook-dedup.db"),
        help=(
            "SQLite file remembering request ids (':memory:' for none on disk); with"
            " ROSSFLOW_STATE_URL set they are kept in that shared database instead"
        ),
    )
    parser.add_argument(
        "--dedup-ttl", type=float, default=86_400.0, help="seconds to remember a request id"
    )
    parser.add_argument(
        "--emit-timeout",
        type=float,
        default=5.0,
        help="seconds to retry the Prefect server before answering 503 (default 5)",
    )
    parser.add_argument(
        "--jobs-db",
        default=os.environ.get("ROSSFLOW_WEBHOOK_JOBS_DB", ".rossflow/export-jobs.db"),
        help="export-event mode: SQLite file of export jobs, the one `rossflow serve "
        "--event-queues` uses ('' disables the mode)",
    )
    parser.add_argument(
        "--export-queues",
        default=os.environ.get("ROSSFLOW_EXPORT_QUEUES"),
        help="comma-separated queues with an export-event pipeline; export calls for other "
        "queues are answered with an error message naming the queue",
    )
    parser.add_argument(
        "--fast-path",
        type=float,
        default=0.0,
        help="seconds to wait for an export result before answering 202 (default 0)",
    )
    parser.add_argument(
        "--claim-timeout",
        type=float,
        default=120.0,
        help="seconds a job may wait for a flow run before it is answered with an error",
    )
    parser.add_argument(
        "--public-url",
        default=os.environ.get("ROSSFLOW_WEBHOOK_PUBLIC_URL"),
        help="base of the polling URLs Rossum gets, e.g. https://rossflow.example.com",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    secrets = _secrets(args)
    if not secrets:
        print(
            f"rossflow webhook: no hook secret (use --secret-file, --secret or ${ENV_SECRET}); "
            "unsigned calls are never accepted",
            file=sys.stderr,
        )
        return 2
    try:
        settings = WebhookSettings(
            secrets=secrets,
            prefect_api_url=args.prefect_api_url,
            max_body_bytes=args.max_body,
            dedup_path=args.dedup_db,
            dedup_ttl_s=args.dedup_ttl,
            emit_timeout_s=args.emit_timeout,
            path=args.path,
            jobs_path=args.jobs_db or None,
            export_queues=[int(q) for q in args.export_queues.split(",") if q.strip()]
            if args.export_queues
            else None,
            fast_path_s=args.fast_path,
            claim_timeout_s=args.claim_timeout,
            public_url=args.public_url,
        )
        server = WebhookServer(settings, args.host, args.port)
    except PortInUseError as exc:
        print(f"rossflow webhook: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"rossflow webhook: {exc}", file=sys.stderr)
        return 2
    emitter = server.app.state.receiver.emitter
    print(
        f"rossflow webhook: listening on {server.hook_url} → Prefect {emitter.api_url}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
