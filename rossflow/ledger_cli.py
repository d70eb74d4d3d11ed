"""``rossflow ledger``: tell rossflow what an operator found in the ERP about a delivery whose
outcome is unknown, so that a replay neither books it twice nor skips it.

    rossflow ledger show --annotation 123
    rossflow ledger mark --annotation 123 --step post_invoice delivered --reply '{"id": "E-7"}'
    rossflow ledger mark --annotation 123 --step post_invoice not-delivered

``delivered`` records the step as done (a replay reuses ``--reply`` as the ERP's answer, so later
steps can read the ERP's id from it); ``not-delivered`` records that the ERP has no such
document (a replay sends it again). The ledger is ``<state-dir>/ledger.db`` unless
``ROSSFLOW_STATE_URL`` names the shared database.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rossflow.ledger import Effect, Ledger
from rossflow.state.database import configured_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rossflow ledger", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default=".rossflow", help="the flow's state_dir")
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="list the deliveries recorded for an annotation")
    show.add_argument("--annotation", required=True, type=int)
    mark = sub.add_parser("mark", help="record what the ERP has for a delivery")
    mark.add_argument("--annotation", required=True, type=int)
    mark.add_argument("--step", required=True, help="the pipeline step named in the message")
    mark.add_argument("outcome", choices=["delivered", "not-delivered"])
    mark.add_argument(
        "--reply",
        default="",
        help='delivered: the ERP\'s answer as later steps should see it, e.g. \'{"id": "E-7"}\'',
    )
    return parser


def _describe(effect: Effect) -> str:
    flags = [f for f in ("uncertain", "reconciled", "marked") if effect.result.get(f)]
    extra = f" ({', '.join(flags)})" if flags else ""
    return f"{effect.step or '-'}: {effect.state}{extra} -> {effect.target} [key {effect.key[:12]}]"


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    path = Path(args.state_dir) / "ledger.db"
    if not configured_url() and not path.exists():
        print(
            f"rossflow ledger: no ledger at {path} (give --state-dir: the flow's state_dir, "
            "or set ROSSFLOW_STATE_URL)",
            file=sys.stderr,
        )
        return 2
    ledger = Ledger(path)
    effects = ledger.for_subject("delivery", str(args.annotation))
    if args.action == "show":
        for effect in effects:
            print(_describe(effect))
        if not effects:
            print(f"no delivery recorded for annotation {args.annotation}")
        return 0
    candidates = [e for e in effects if e.step == args.step]
    if not candidates:
        steps = sorted({e.step for e in effects}) or ["none"]
        print(
            f"rossflow ledger: no delivery of step {args.step!r} recorded for annotation "
            f"{args.annotation} (steps recorded: {', '.join(steps)})",
            file=sys.stderr,
        )
        return 1
    effect = max(candidates, key=lambda e: e.updated_at)  # the latest attempt generation
    if args.outcome == "delivered":
        text = args.reply
        if text:
            try:
                json.loads(text)
            except ValueError as exc:
                print(f"rossflow ledger: --reply is not JSON: {exc}", file=sys.stderr)
                return 2
        record = {
            "status_code": 200,
            "raw": [["content-type", "application/json"]] if text else [],
            "text": text,
            "url": None,
            "elapsed_s": 0.0,
        }
        ledger.finish(effect.key, ok=True, result={"record": record, "marked": "delivered"})
    else:
        ledger.finish(effect.key, ok=False, result={"uncertain": False, "marked": "not-delivered"})
    print(f"annotation {args.annotation}, {_describe(ledger.get(effect.key))}")  # type: ignore[arg-type]
    print("now replay the annotation (annotation_ids) to finish its export")
    return 0
