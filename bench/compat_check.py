"""Compatibility check against a directory of real Rossum export configs (dev script).

    python -m bench.compat_check /path/to/compat-corpus [--verbose]

The directory holds ``configs/*.json`` (hook objects as ``GET /v1/hooks`` returns them) and
``schemas/*.json`` (queue schemas). For each config this loads it, builds a synthetic
annotation from the schema of each queue the hooks are attached to, previews every step (as
``rossflow render`` does) and prints per config: load result, warnings that mean something is
skipped or ignored, templates rendered and whether their bytes equal a plain Jinja2 rendering
(the engine Rossum's templating uses), and every request as it would be sent.

The corpus is third-party data: it is read from where it lies, never copied into the project.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from rossflow.export.config import PipelineConfig, TemplateStep
from rossflow.export.context import build_context
from rossflow.export.errors import ConfigError
from rossflow.export.loading import load_pipeline
from rossflow.export.preview import one_line, preview

CODE_STAND_IN = "examples.erp_responses:handle"
SKIP_WORDS = ("left out", "skipped", "ignored", "preserved in 'extra'", "not supported")
ORIGINAL = b"%PDF-1.4\n% synthetic original for the compatibility check\n%%EOF\n"


# --------------------------------------------------------------------- synthetic annotation


def _value(node: Mapping[str, Any], row: int) -> str:
    sid = str(node.get("id"))
    kind = node.get("type")
    if sid.endswith("_url"):
        return f"https://erp.example.test/{sid}"
    if sid.endswith("_gate"):
        return "true"
    if kind == "enum":
        options = node.get("options") or [{"value": "opt"}]
        return str(options[0].get("value", "opt"))
    if kind == "number":
        return f"{12.5 + row}"
    if kind == "date":
        return f"2026-01-{10 + row:02d}"
    return f"{sid} {row} & co"


def _node(schema: Mapping[str, Any], ids: list[int], row: int = 1) -> dict[str, Any]:
    ids[0] += 1
    category = schema.get("category")
    node: dict[str, Any] = {"id": ids[0], "category": category, "schema_id": schema.get("id")}
    children = schema.get("children")
    if category == "datapoint":
        node["content"] = {"value": _value(schema, row)}
    elif category == "multivalue":
        child = children if isinstance(children, Mapping) else (children or [{}])[0]
        node["children"] = [_node(child, ids, r) for r in (1, 2)]
    else:
        node["children"] = [_node(c, ids, row) for c in children or []]
    return node


def synthetic_item(schema: Mapping[str, Any], queue_id: int | None) -> dict[str, Any]:
    """An export item whose content follows ``schema`` (two rows per table)."""
    ids = [1000]
    return {
        "url": "https://example.rossum.app/api/v1/annotations/777",
        "id": 777,
        "status": "exporting",
        "queue": f"https://example.rossum.app/api/v1/queues/{queue_id or 1}",
        "document": {
            "url": "https://example.rossum.app/api/v1/documents/888",
            "file_name": "invoice 888.pdf",
            "file": "https://example.rossum.app/api/v1/documents/888/content",
        },
        "content": [_node(section, ids) for section in schema.get("content") or []],
        "automated": True,
        "confirmed_at": "2026-01-31T10:00:00Z",
    }


def pick_schema(schemas: dict[str, Any], queue_id: int | None) -> tuple[str, Any]:
    for name, schema in schemas.items():
        queues = [str(q).rstrip("/").rsplit("/", 1)[-1] for q in schema.get("queues") or []]
        if queue_id is not None and (str(queue_id) in queues or str(queue_id) in name):
            return name, schema
    name = sorted(schemas)[0]
    return f"{name} (no schema of queue {queue_id}; used as a stand-in)", schemas[name]


# --------------------------------------------------------------------------- reference render


def hook_payload(item: Mapping[str, Any]) -> dict[str, Any]:
    """The export-event hook payload Rossum gives its templating, built here independently of
    rossflow's context code (``annotation`` = the annotation object, ``document`` its file)."""
    doc = item["document"]
    annotation = {k: v for k, v in item.items() if k != "document"}
    document = {
        "id": int(doc["url"].rstrip("/").rsplit("/", 1)[-1]),
        "url": doc["url"],
        "original_file_name": doc["file_name"],
        "content": doc["file"],
    }
    return {"annotation": annotation, "document": document}


def reference_render(config: PipelineConfig, item: Mapping[str, Any]) -> dict[str, bytes]:
    """Templates rendered by a plain ``jinja2.Environment()`` like Rossum's own templating
    (and its ``export-template-helper``): no autoescape, lenient undefined, plain ``tojson``.
    ``field`` comes from rossflow's flattening (checked by its own tests); ``payload`` not."""
    ctx = build_context(item, original_file=lambda: ORIGINAL)
    out = {}
    env = jinja2.Environment()
    for step in config.steps:
        if isinstance(step, TemplateStep):
            for output in step.outputs:
                if output.tabular is None:
                    text = env.from_string(output.template_text).render(
                        field=ctx.field, payload=hook_payload(item)
                    )
                    out[output.key] = text.encode(output.content_encoding)
    return out


# ---------------------------------------------------------------------------------- checking


def check_config(path: Path, schemas: dict[str, Any], verbose: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"config": path.name}
    try:
        config = load_pipeline(path)
        result["status"] = "loaded"
    except ConfigError as exc:
        result["status"] = "refused"
        result["message"] = one_line(exc)
        code_hooks = [p.split("'")[1] for p in exc.problems if "serverless function" in p]
        if not code_hooks or len(code_hooks) != len(exc.problems):
            return result
        # Refused only for serverless hooks: check the rest with them mapped to a function,
        # as a user does with code_steps.
        try:
            config = load_pipeline(path, code_steps=dict.fromkeys(code_hooks, CODE_STAND_IN))
        except ConfigError as again:
            result["message"] += f" | with code_steps mapped: {one_line(again)}"
            return result
        result["status"] = f"loaded once code_steps maps {', '.join(map(repr, code_hooks))}"
    result["steps"] = len(config.steps)
    result["warnings"] = list(config.warnings)
    result["skipped"] = [w for w in config.warnings if any(s in w for s in SKIP_WORDS)]
    queues = sorted({q for s in config.steps for q in s.queues}) or [None]
    runs = []
    for queue_id in queues:
        schema_name, schema = pick_schema(schemas, queue_id)
        item = synthetic_item(schema, queue_id)
        entries = preview(
            config,
            item,
            original=ORIGINAL,
            secrets={"client_secret": "s3cr3t-value"},
            queue_id=queue_id,
        )
        queue_config = config.model_copy(update={"steps": config.steps_for_queue(queue_id)})
        reference = reference_render(queue_config, item)
        templates = []
        for entry in entries:
            for f in entry.get("files", []):
                ref = reference.get(f["key"])
                templates.append(
                    {
                        "key": f["key"],
                        "bytes": len(f["content"]),
                        "sha256": hashlib.sha256(f["content"]).hexdigest()[:12],
                        "same_as_reference": ref == f["content"],
                    }
                )
        requests = [
            {
                "step": e["step"],
                "label": r["label"],
                "method": r["method"],
                "url": r["url"],
                "headers": r["headers"],
                "body_bytes": len(r["body"]),
                "body_head": r["body"][:160].decode("utf-8", "replace"),
            }
            for e in entries
            for r in e.get("requests", [])
        ]
        runs.append(
            {
                "queue": queue_id,
                "schema": schema_name,
                "errors": [f"{e['step']}: {e['error']}" for e in entries if "error" in e],
                "notes": [f"{e['step']}: {e['note']}" for e in entries if "note" in e],
                "templates": templates,
                "requests": requests,
                "uploads": [u for e in entries for u in e.get("uploads", [])],
            }
        )
    result["runs"] = runs
    return result


def _print(result: dict[str, Any], verbose: bool) -> None:
    print(f"### {result['config']}: {result['status']}")
    if "message" in result:
        print(f"    {result['message']}")
    if result["status"] == "refused":
        return
    print(
        f"    {result['steps']} step(s); {len(result['warnings'])} warning(s), "
        f"{len(result['skipped'])} about something skipped/ignored"
    )
    for w in result["warnings"] if verbose else result["skipped"]:
        print(f"    warning: {w}")
    for run in result["runs"]:
        same = sum(t["same_as_reference"] for t in run["templates"])
        print(
            f"  queue {run['queue']} (schema {run['schema']}): {len(run['templates'])} "
            f"template(s), {same} byte-identical to plain Jinja2; {len(run['requests'])} "
            f"request(s); {len(run['uploads'])} upload(s); {len(run['errors'])} error(s)"
        )
        for t in run["templates"]:
            print(f"    template {t['key']}: {t['bytes']} bytes sha256 {t['sha256']}")
        for r in run["requests"]:
            print(f"    {r['step']} / {r['label']}: {r['method']} {r['url']} ({r['body_bytes']} B)")
            if verbose:
                for k, v in r["headers"].items():
                    print(f"        {k}: {v}")
                print(f"        body: {r['body_head']!r}")
        for u in run["uploads"]:
            print(f"    upload {u['object']} -> {u['target']}{u['path']}")
        for e in run["errors"]:
            print(f"    ERROR {e}")
        if verbose:
            for n in run["notes"]:
                print(f"    note {n}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="directory with configs/ and schemas/")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    schemas = {
        p.name: json.loads(p.read_text()) for p in sorted((args.corpus / "schemas").glob("*.json"))
    }
    results = [
        check_config(p, schemas, args.verbose)
        for p in sorted((args.corpus / "configs").glob("*.json"))
    ]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        for r in results:
            _print(r, args.verbose)
    loaded = [r for r in results if r["status"] != "refused"]
    clean = [
        r
        for r in loaded
        if not r["skipped"]
        and all(not run["errors"] for run in r["runs"])
        and all(t["same_as_reference"] for run in r["runs"] for t in run["templates"])
    ]
    print(
        f"\n{len(results)} config(s): {len(loaded)} loaded "
        f"({sum(r['status'] == 'loaded' for r in results)} as they are), "
        f"{len(results) - len(loaded)} refused; {len(clean)} loaded with nothing skipped, no "
        "preview error and every template byte-identical to the reference"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
