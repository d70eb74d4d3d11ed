"""``rossflow`` command line: one entry point, one subcommand per job.

Each subcommand imports its module lazily so that ``rossflow --help`` stays instant and a broken
optional piece cannot take the others down.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module, function, one-line help). The function takes argv (list[str]) and returns
# an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("rossflow.demo", "run", "run the whole pipeline on the embedded local stack"),
    "doctor": (
        "rossflow.doctor",
        "run",
        "check an installation without side effects (Prefect, blocks, Rossum queues, targets)",
    ),
    "setup": (
        "rossflow.setup",
        "run",
        "register block types and create blocks from a config file or ROSSFLOW_* variables",
    ),
    "serve": (
        "deployments.serve",
        "run",
        "serve the ingest and export deployments (schedules, webhook triggers) from one process",
    ),
    "webhook": (
        "rossflow.webhook.cli",
        "run",
        "receive Rossum hook calls and emit Prefect events (triggers the export)",
    ),
    "export-hook": (
        "rossflow.export_hook_cli",
        "run",
        "register the annotation_content.export hook in Rossum for a queue (export-event mode)",
    ),
    "ledger": ("rossflow.ledger_cli", "run", "show deliveries; mark one delivered/not-delivered"),
    "artifacts": (
        "rossflow.artifacts_cli",
        "run",
        "list, show or export what the export stored per annotation (requests, replies)",
    ),
    "sandbox": ("sandbox.cli", "run", "run the local Rossum-compatible API server"),
    "prefect-server": (
        "rossflow.localstack.prefect_server",
        "run",
        "run Prefect's server for the local stack (fast retry when SQLite is busy)",
    ),
    "erp": ("rossflow.localstack.erp", "run", "run the local ERP stand-in (HTTP)"),
    "sftp": ("rossflow.localstack.sftp_server", "run", "run a local SFTP server"),
    "s3": ("rossflow.localstack.s3_server", "run", "run a local S3-compatible server (moto)"),
    "hooks": (
        "rossflow.hooks_cli",
        "run",
        "hooks pull --queue ID: write a queue's export hooks as a pipeline file",
    ),
    "render": (
        "rossflow.export.preview",
        "run",
        "preview a pipeline's templates for one annotation (delivers nothing)",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: rossflow <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `rossflow <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"rossflow: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
