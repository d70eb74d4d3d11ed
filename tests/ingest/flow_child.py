"""Runs the ingest flow in its own process (for the kill-and-rerun test).

``python -m tests.ingest.flow_child '<json>'`` with the SFTP server, sandbox and options; the
Prefect API comes from ``PREFECT_API_URL``; an optional ``start_at`` (epoch seconds) holds
the run until then.
"""

from __future__ import annotations

import json
import sys
import time


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
    # Several children started together begin together, once their imports are done.
    time.sleep(max(0.0, float(config.get("start_at", 0)) - time.time()))
    summary = ingest(source=source, rossum=rossum, options=IngestOptions(**config["options"]))
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
