"""One "host" racing another for claims: ``python -m tests.state.race_child '<json>'``.

Waits until ``start_at`` (so both processes start together), then tries to claim every key in
``keys`` (delivery steps in the ledger, or ingest leases) and prints the keys it won as JSON.
The state store comes from ``ROSSFLOW_STATE_URL``/``ROSSFLOW_STATE_SCHEMA`` in the environment.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path


def main() -> int:
    config = json.loads(sys.argv[1])
    from rossflow.ingest.state import IngestState, RunOwner
    from rossflow.ledger import EffectBusy, Ledger

    keys: list[str] = config["keys"]
    random.Random(config["seed"]).shuffle(keys)  # the two hosts meet in the middle
    won: list[str] = []
    busy: list[str] = []
    if config["what"] == "delivery":
        ledger = Ledger(config["path"])
        time.sleep(max(0.0, config["start_at"] - time.time()))
        for key in keys:
            try:
                done = ledger.claim(key, kind="delivery", subject=key, step="erp")
            except EffectBusy:
                busy.append(key)
                continue
            if done is None:
                won.append(key)  # "deliver", then record the outcome
                time.sleep(0.001)
                ledger.finish(key, ok=True, result={"by": config["name"]})
    else:
        state = IngestState(config["path"])
        owner = RunOwner.current(f"run-{config['name']}")
        state.register_run(owner)
        time.sleep(max(0.0, config["start_at"] - time.time()))
        for key in keys:
            if state.acquire_lease(key, f"{owner.run_id}/tok", owner.run_id) is None:
                won.append(key)
            else:
                busy.append(key)
            time.sleep(0.001)  # as if uploading: the two hosts' loops overlap
    print(json.dumps({"won": won, "busy": busy}), flush=True)
    # Stay alive until the other host is through its keys too: a holder whose process is gone
    # loses its leases by design, and the other would rightly take them over.
    Path(config["finished"]).touch()
    deadline = time.time() + 120
    while not Path(config["other_finished"]).exists() and time.time() < deadline:
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
