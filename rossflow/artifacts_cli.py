"""``rossflow artifacts``: what the export stored for an annotation (rendered files, requests,
replies; secrets already masked), from ``<state-dir>/artifacts/artifacts.db``.

    rossflow artifacts list --annotation 123
    rossflow artifacts show --annotation 123 --step post_invoice --name response.body
    rossflow artifacts export --out ./artifacts [--annotation 123]

``export`` writes files as ``<out>/<annotation>/<step>/<name>`` for browsing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rossflow.artifacts import ArtifactStore


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rossflow artifacts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--state-dir", default=".rossflow", help="the flow's state_dir")
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="list what was stored (for one annotation)")
    listing.add_argument("--annotation", type=int)
    show = sub.add_parser("show", help="print one artifact")
    show.add_argument("--annotation", required=True, type=int)
    show.add_argument("--step", required=True)
    show.add_argument("--name", required=True)
    export = sub.add_parser("export", help="write artifacts as files")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--annotation", type=int)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    path = Path(args.state_dir) / "artifacts" / "artifacts.db"
    if not path.exists():
        print(
            f"rossflow artifacts: nothing stored at {path} (give --state-dir: the flow's "
            "state_dir)",
            file=sys.stderr,
        )
        return 2
    store = ArtifactStore(path.parent)
    try:
        if args.action == "show":
            try:
                data = store.read(args.annotation, args.step, args.name)
            except KeyError:
                names = [f"{i.step}/{i.name}" for i in store.listing(args.annotation)] or ["none"]
                print(
                    f"rossflow artifacts: annotation {args.annotation} has no {args.step}/"
                    f"{args.name} (stored: {', '.join(names)})",
                    file=sys.stderr,
                )
                return 1
            sys.stdout.buffer.write(data)
            return 0
        if args.action == "export":
            written = store.export(args.out, args.annotation)
            print(f"{len(written)} file(s) written under {args.out}")
            return 0
        infos = store.listing(args.annotation)
        for info in infos:
            when = datetime.fromtimestamp(info.stored_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{info.annotation_id}  {info.step}/{info.name}  {info.size} B  {when} UTC")
        if not infos:
            print(
                "nothing stored" + (f" for annotation {args.annotation}" if args.annotation else "")
            )
        return 0
    finally:
        store.close()
