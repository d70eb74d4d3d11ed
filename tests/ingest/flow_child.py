"""Runs the ingest flow in its own process (for the kill-and-rerun test).

``python -m tests.ingest.flow_child '<json>'`` with the SFTP server, sandbox and options; the
Prefect API comes from ``PREFECT_API_URL``.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    config = json.loads(sys.argv[1])
    from blocks.rossum import RossumCredentials
    from blocks.sftp import SftpServer
    from blocks.sources import IngestSource
    from flows.ingest import ingest
    from rossflow.ingest import IngestOptions

    source = IngestSource(
        sftp_server=SftpServer(**config["sftp"]),
        directory=config["directory"],
        rules=config["rules"],
    )
    rossum = RossumCredentials(**config["rossum"])
    summary = ingest(source=source, rossum=rossum, options=IngestOptions(**config["options"]))
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
