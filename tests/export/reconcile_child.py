"""One export run in its own process, to be SIGKILLed mid-call:
``python -m tests.export.reconcile_child '<json>'`` (sandbox, ERP, state dir, pipeline, ids)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


async def run(config: dict[str, Any]) -> None:
    from tests.export.conftest import ExportRig

    rig = ExportRig(
        sandbox=SimpleNamespace(
            api_url=config["api_url"], username=config["username"], password=config["password"]
        ),
        erp=SimpleNamespace(url=config["erp_url"]),
        state=Path(config["state"]),
    )
    await rig.run(config["pipeline"], config["ids"])


def main() -> int:
    asyncio.run(run(json.loads(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
