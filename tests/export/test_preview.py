"""``rossflow render``: previews templates and requests without delivering anything."""

from __future__ import annotations

import json
from pathlib import Path

from rossflow.cli import main

EXAMPLE = Path(__file__).parents[2] / "examples" / "erp-json.yaml"


def test_render_an_annotation_from_the_sandbox(sandbox, erp_server, tmp_path, capsys):
    (ann_id,) = sandbox.seed(queue=1, count=1, status="confirmed")
    code = main(
        [
            "render",
            str(EXAMPLE),
            "--annotation",
            str(ann_id),
            "--rossum-url",
            sandbox.api_url,
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    rendered = json.loads((tmp_path / "out" / "invoice_json").read_text())
    assert rendered["number"].startswith("INV-")
    assert "POST /api/invoices" in out
    assert erp_server.stats()["requests"] == 0
    status = sandbox.stats()["requests"]
    assert not any(k.startswith(("POST /api/v1/queues", "PATCH")) for k in status)


def test_render_from_saved_json_reports_template_errors_with_line(tmp_path, capsys):
    item = {
        "url": "https://acme.rossum.app/api/v1/annotations/7",
        "status": "confirmed",
        "document": {"url": "https://acme.rossum.app/api/v1/documents/7", "file_name": "a.pdf"},
        "content": [
            {
                "category": "section",
                "schema_id": "s",
                "children": [
                    {"category": "datapoint", "schema_id": "invoice_id", "value": "INV-7"}
                ],
            }
        ],
    }
    saved = tmp_path / "export.json"
    saved.write_text(json.dumps({"pagination": {}, "results": [item]}))
    code = main(["render", str(EXAMPLE), "--from-json", str(saved)])
    out = capsys.readouterr().out
    assert code == 1
    assert "template 'invoice_json' line 1" in out and "has no attribute" in out
