"""Checklist 8-11 and 21: uploads, tasks, upload objects, deprecated upload, documents."""

from __future__ import annotations

import json
import socket
import urllib.parse

import httpx

from sandbox.server import SandboxServer
from tests.sandbox.helpers import INVOICE_TEXT, datapoints, upload, wait_status


def test_upload_multipart_multiple_files_task_and_upload(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    files = [("content", ("a.txt", b"Invoice number: A")), ("content", ("b.pdf", b"%PDF-1.4"))]
    resp = sandbox_client.post("/v1/uploads", params={"queue": 1}, files=files)
    assert resp.status_code == 202
    task_url = resp.json()["url"]
    assert resp.headers["Location"] == task_url
    assert task_url.startswith(f"{sandbox.api_url}/v1/tasks/")
    redirect = sandbox_client.get(task_url)
    assert redirect.status_code == 303
    upload_url = redirect.headers["Location"]
    assert upload_url.startswith(f"{sandbox.api_url}/v1/uploads/")
    task = sandbox_client.get(task_url, params={"no_redirect": "true"})
    assert task.status_code == 200
    body = task.json()
    assert body["type"] == "upload_created" and body["status"] == "succeeded"
    assert body["content"] == {"upload": upload_url}
    assert set(body) >= {
        "id",
        "url",
        "type",
        "status",
        "expires_at",
        "detail",
        "content",
        "result_url",
    }
    up = sandbox_client.get(upload_url).json()
    assert set(up) >= {
        "id",
        "url",
        "queue",
        "creator",
        "created_at",
        "email",
        "organization",
        "documents",
        "additional_documents",
        "annotations",
    }
    assert len(up["documents"]) == 2 and len(up["annotations"]) == 2
    ann = sandbox_client.get(up["annotations"][0]).json()
    assert ann["status"] in ("importing", "to_review")
    doc = sandbox_client.get(up["documents"][1]).json()
    assert doc["mime_type"] == "application/pdf" and doc["original_file_name"] == "b.pdf"


def test_task_running_then_succeeded(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.settings(upload_task_delay_s=0.3)
    resp = sandbox_client.post("/v1/uploads?queue=1", files={"content": ("a.txt", b"x")})
    running = sandbox_client.get(resp.json()["url"])
    assert running.status_code == 200 and running.json()["status"] == "running"
    wait = httpx.Client(headers=sandbox_client.headers)
    import time

    time.sleep(0.35)
    assert wait.get(resp.json()["url"]).status_code == 303


def test_failed_task_is_200(sandbox_client: httpx.Client) -> None:
    resp = sandbox_client.post(
        "/v1/uploads?queue=1", files={"content": ("SANDBOX_FAIL_UPLOAD.pdf", b"x")}
    )
    task = sandbox_client.get(resp.json()["url"])
    assert task.status_code == 200
    assert task.json()["status"] == "failed" and task.json()["detail"]


def test_raw_body_with_content_disposition_and_filename_url(sandbox_client: httpx.Client) -> None:
    name = "faktura 🎁.txt"
    header = "attachment; filename*=utf-8''" + urllib.parse.quote(name)
    resp = sandbox_client.post(
        "/v1/uploads?queue=1",
        content=INVOICE_TEXT.encode(),
        headers={"Content-Disposition": header},
    )
    assert resp.status_code == 202
    up = sandbox_client.get(sandbox_client.get(resp.json()["url"]).headers["Location"]).json()
    doc = sandbox_client.get(up["documents"][0]).json()
    assert doc["original_file_name"] == name
    resp2 = sandbox_client.post(
        "/v1/uploads/" + urllib.parse.quote("second.txt") + "?queue=2", content=b"Invoice number: 2"
    )
    assert resp2.status_code == 202
    up2 = sandbox_client.get(resp2.json()["url"], params={"no_redirect": True}).json()
    upload_obj = sandbox_client.get(up2["result_url"]).json()
    assert upload_obj["queue"].endswith("/v1/queues/2")
    assert (
        sandbox_client.get(upload_obj["documents"][0]).json()["original_file_name"] == "second.txt"
    )
    missing = sandbox_client.post("/v1/uploads?queue=1", content=b"data")
    assert missing.status_code == 400


def test_deprecated_queue_upload_201(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    resp = sandbox_client.post(
        "/v1/queues/1/upload",
        files=[("content", ("a.txt", b"one")), ("content", ("b.txt", b"two"))],
    )
    assert resp.status_code == 201
    body = resp.json()
    assert set(body) == {"results", "annotation", "document"}
    assert len(body["results"]) == 2
    assert body["annotation"] == body["results"][0]["annotation"]
    assert body["document"].startswith(f"{sandbox.api_url}/v1/documents/")
    raw = sandbox_client.post(
        "/v1/queues/1/upload/raw.txt",
        content=b"Invoice number: R-1",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 201
    doc = sandbox_client.get(raw.json()["document"]).json()
    assert doc["original_file_name"] == "raw.txt"


def test_metadata_and_values(sandbox_client: httpx.Client) -> None:
    ann_id = upload(
        sandbox_client,
        INVOICE_TEXT,
        metadata=json.dumps({"project": "ABC"}),
        values=json.dumps({"upload:cost_center": "CC-42"}),
    )
    ann = wait_status(sandbox_client, ann_id, "to_review")
    assert ann["metadata"] == {"project": "ABC"}
    content = sandbox_client.get(f"/v1/annotations/{ann_id}/content").json()["content"]
    assert datapoints(content)["cost_center"]["content"]["value"] == "CC-42"


def test_metadata_limits_and_errors(sandbox_client: httpx.Client) -> None:
    big = json.dumps({"x": "a" * 5000})
    resp = sandbox_client.post(
        "/v1/uploads?queue=1", files={"content": ("a.txt", b"x")}, data={"metadata": big}
    )
    assert resp.status_code == 400
    assert (
        sandbox_client.post(
            "/v1/uploads?queue=1", files={"content": ("a.txt", b"x")}, data={"metadata": "[1,2]"}
        ).status_code
        == 400
    )
    assert (
        sandbox_client.post(
            "/v1/uploads?queue=1", files={"content": ("a.txt", b"x")}, data={"values": "nope"}
        ).status_code
        == 400
    )
    assert sandbox_client.post("/v1/uploads", files={"content": ("a.txt", b"x")}).status_code == 400
    unknown = sandbox_client.post("/v1/uploads?queue=99", files={"content": ("a.txt", b"x")})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


def test_oversized_upload_413(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    big = b"0" * (40 * 1024 * 1024 + 1)
    resp = sandbox_client.post("/v1/uploads?queue=1", files={"content": ("big.pdf", big)})
    assert resp.status_code == 413
    assert resp.json() == {"detail": "Payload Too Large.", "code": "payload_too_large"}
    raw = sandbox_client.post("/v1/uploads/big.bin?queue=1", content=big)
    assert raw.status_code == 413
    assert sandbox_client.get("/v1/documents").json()["pagination"]["total"] == 0


def test_oversized_chunked_upload_413(sandbox: SandboxServer, sandbox_token: str) -> None:
    """No Content-Length: the limit is enforced while streaming."""
    sandbox.settings(max_upload_bytes=1024 * 1024)

    def chunks():
        for _ in range(3):
            yield b"x" * (512 * 1024)

    resp = httpx.post(
        f"{sandbox.api_url}/v1/uploads/stream.bin?queue=1",
        content=chunks(),
        headers={"Authorization": f"Bearer {sandbox_token}"},
    )
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large"


def test_reject_identical(sandbox_client: httpx.Client) -> None:
    files = {"content": ("same.txt", b"identical body")}
    first = sandbox_client.post("/v1/uploads?queue=1&reject_identical=true", files=files)
    assert first.status_code == 202
    dup = sandbox_client.post("/v1/uploads?queue=1&reject_identical=true", files=files)
    assert dup.status_code == 409
    assert dup.json() == {"detail": "Conflict.", "code": "conflict_status"}
    other_name = sandbox_client.post(
        "/v1/uploads?queue=1&reject_identical=true",
        files={"content": ("other.txt", b"identical body")},
    )
    assert other_name.status_code == 202
    without_flag = sandbox_client.post("/v1/uploads?queue=1", files=files)
    assert without_flag.status_code == 202


def test_inactive_queue_rejects_upload(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    patched = httpx.patch(
        f"{sandbox.url}/_sandbox/objects/queues/2", json={"status": "deletion_requested"}
    )
    assert patched.status_code == 200
    resp = sandbox_client.post("/v1/uploads?queue=2", files={"content": ("a.txt", b"x")})
    assert resp.status_code == 400


def test_document_content_download(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    pdf = b"%PDF-1.4\n%fake but binary \x00\x01\x02"
    resp = sandbox_client.post("/v1/queues/1/upload", files={"content": ("scan.pdf", pdf)})
    doc_url = resp.json()["document"]
    doc = sandbox_client.get(doc_url).json()
    assert doc["content"] == doc_url + "/content"
    assert doc["annotations"] == [resp.json()["annotation"]]
    for key in (
        "s3_name",
        "parent",
        "email",
        "mime_type",
        "creator",
        "created_at",
        "arrived_at",
        "original_file_name",
        "attachment_status",
        "metadata",
    ):
        assert key in doc
    file = sandbox_client.get(doc["content"])
    assert file.status_code == 200
    assert file.content == pdf
    assert file.headers["content-type"] == "application/pdf"


def test_upload_does_not_buffer_when_content_length_is_huge(
    sandbox: SandboxServer, sandbox_token: str
) -> None:
    """A declared 10 GB body is refused from the header alone."""
    host, port = "127.0.0.1", sandbox.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/uploads/x.bin?queue=1 HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + sandbox_token.encode() + b"\r\n"
            b"Content-Length: 10000000000\r\n\r\n" + b"abc"
        )
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413")


def test_multi_file_upload_lists_documents_and_annotations_in_file_order(
    sandbox_client: httpx.Client,
) -> None:
    names = [f"f{i}.pdf" for i in (3, 1, 4, 0, 2)]  # not sorted: order must follow the request
    files = [("content", (n, b"%PDF-1.4 " + n.encode(), "application/pdf")) for n in names]
    meta = {"batch": "b1", "files": [{"original_file_name": n} for n in names]}
    resp = sandbox_client.post(
        "/v1/uploads", params={"queue": 1}, files=files, data={"metadata": json.dumps(meta)}
    )
    assert resp.status_code == 202
    task = sandbox_client.get(resp.json()["url"], params={"no_redirect": "true"}).json()
    up = sandbox_client.get(task["content"]["upload"]).json()
    assert len(up["documents"]) == len(up["annotations"]) == len(names)
    for name, doc_url, ann_url in zip(names, up["documents"], up["annotations"], strict=True):
        doc = sandbox_client.get(doc_url).json()
        ann = sandbox_client.get(ann_url).json()
        assert doc["original_file_name"] == name
        assert ann["document"] == doc_url and doc["annotations"] == [ann_url]
        assert ann["metadata"] == meta  # one metadata object for every annotation


def test_reject_identical_allows_one_file_only(sandbox_client: httpx.Client) -> None:
    files = [("content", ("a.txt", b"a")), ("content", ("b.txt", b"b"))]
    resp = sandbox_client.post("/v1/uploads?queue=1&reject_identical=true", files=files)
    assert resp.status_code == 400
    # Nothing was created.
    again = sandbox_client.post(
        "/v1/uploads?queue=1&reject_identical=true", files={"content": ("a.txt", b"a")}
    )
    assert again.status_code == 202


def test_reject_identical_is_organization_wide(sandbox_client: httpx.Client) -> None:
    files = {"content": ("org.txt", b"same content, other queue")}
    assert sandbox_client.post("/v1/uploads?queue=1", files=files).status_code == 202
    other_queue = sandbox_client.post("/v1/uploads?queue=2&reject_identical=true", files=files)
    assert other_queue.status_code == 409
