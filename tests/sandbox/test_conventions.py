"""Checklist 4-6 and 24: pagination, absolute URLs, dates, error bodies, trailing slashes."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import httpx

from sandbox.server import SandboxServer

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
NOT_FOUND = {"detail": "Not found.", "code": "not_found"}
BAD_REQUEST = {"detail": "Bad Request.", "code": "bad_request"}


def test_index_lists_collections(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    body = sandbox_client.get("/v1").json()
    assert body["queues"] == f"{sandbox.api_url}/v1/queues"
    assert {"organizations", "workspaces", "schemas", "documents", "users", "annotations"} <= set(
        body
    )


def test_pagination_defaults_caps_and_links(
    sandbox: SandboxServer, sandbox_client: httpx.Client
) -> None:
    sandbox.seed(queue=1, count=250, status="to_review")
    first = sandbox_client.get("/v1/annotations", params={"queue": 1, "status": "to_review"}).json()
    assert set(first) == {"pagination", "results"}
    assert first["pagination"]["total"] == 250
    assert first["pagination"]["total_pages"] == 13
    assert len(first["results"]) == 20
    assert first["pagination"]["previous"] is None
    nxt = urlparse(first["pagination"]["next"])
    assert nxt.scheme == "http" and nxt.netloc == urlparse(sandbox.url).netloc
    query = parse_qs(nxt.query)
    assert query["page"] == ["2"] and query["queue"] == ["1"] and query["status"] == ["to_review"]
    capped = sandbox_client.get("/v1/annotations", params={"page_size": 1000}).json()
    assert len(capped["results"]) == 100
    assert capped["pagination"]["total_pages"] == 3
    second = httpx.get(first["pagination"]["next"], headers=sandbox_client.headers).json()
    assert second["results"][0]["id"] == first["results"][-1]["id"] + 1
    assert parse_qs(urlparse(second["pagination"]["previous"]).query)["page"] == ["1"]
    last = sandbox_client.get("/v1/annotations", params={"page": 13}).json()
    assert last["pagination"]["next"] is None and len(last["results"]) == 10
    beyond = sandbox_client.get("/v1/annotations", params={"page": 14})
    assert beyond.status_code == 404 and beyond.json() == NOT_FOUND


def test_absolute_urls_and_dates(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    ann_id = sandbox.seed(queue=1, count=1, status="confirmed")[0]
    ann = sandbox_client.get(f"/v1/annotations/{ann_id}").json()
    assert ann["url"] == f"{sandbox.api_url}/v1/annotations/{ann_id}"
    assert ann["queue"] == f"{sandbox.api_url}/v1/queues/1"
    assert ann["content"] == f"{sandbox.api_url}/v1/annotations/{ann_id}/content"
    assert DATE_RE.match(ann["created_at"]) and DATE_RE.match(ann["confirmed_at"])
    assert isinstance(ann["id"], int)
    # URLs follow the Host the client used
    other = httpx.get(
        f"http://localhost:{sandbox.port}/api/v1/annotations/{ann_id}",
        headers=sandbox_client.headers,
    ).json()
    assert other["url"].startswith(f"http://localhost:{sandbox.port}/api/v1/")


def test_unknown_ids_404(sandbox_client: httpx.Client) -> None:
    for path in (
        "/v1/annotations/999999",
        "/v1/queues/999",
        "/v1/documents/999",
        "/v1/hooks/5",
        "/v1/tasks/77",
        "/v1/uploads/9",
        "/v1/schemas/9",
        "/v1/annotations/999999/content",
        "/v1/nonexistent",
    ):
        resp = sandbox_client.get(path)
        assert resp.status_code == 404, path
        assert resp.json() == NOT_FOUND, path


def test_wrong_types_are_400(sandbox_client: httpx.Client) -> None:
    for params in (
        {"queue": "abc"},
        {"id": "1,x"},
        {"status": "nonsense"},
        {"created_at_after": "yesterday"},
    ):
        resp = sandbox_client.get("/v1/annotations", params=params)
        assert resp.status_code == 400, params
        assert resp.json() == BAD_REQUEST
        assert resp.headers["X-Sandbox-Error"]
    bad_json = sandbox_client.post(
        "/v1/hooks", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.json() == BAD_REQUEST
    assert (
        sandbox_client.post("/v1/uploads?queue=abc", files={"content": ("a.txt", b"x")}).status_code
        == 400
    )


def test_trailing_slash_accepted(sandbox_client: httpx.Client) -> None:
    assert sandbox_client.get("/v1/queues/").status_code == 200
    assert sandbox_client.get("/v1/queues/1/").json()["id"] == 1
    assert sandbox_client.get("/v1/queues/1").json()["id"] == 1


def test_method_not_allowed(sandbox_client: httpx.Client) -> None:
    resp = sandbox_client.delete("/v1/organizations/1")
    assert resp.status_code == 405
    assert set(resp.json()) == {"detail", "code"}


def test_seeded_objects(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    org = sandbox_client.get("/v1/organizations/1").json()
    assert org["workspaces"] == [f"{sandbox.api_url}/v1/workspaces/1"]
    ws = sandbox_client.get("/v1/workspaces/1").json()
    assert len(ws["queues"]) == 2
    users = sandbox_client.get("/v1/users").json()["results"]
    assert users[0]["username"] == "admin@rossflow.local"
    assert "_password_sha256" not in users[0]
    schema = sandbox_client.get("/v1/schemas/1").json()
    sections = [s["id"] for s in schema["content"]]
    assert sections == [
        "invoice_info_section",
        "amounts_section",
        "vendor_section",
        "line_items_section",
        "other_section",
    ]
    q1, q2 = sandbox_client.get("/v1/queues").json()["results"]
    assert (q1["name"], q1["use_confirmed_state"]) == ("Invoices", True)
    assert (q2["name"], q2["use_confirmed_state"]) == ("Invoices (auto-export)", False)
    assert q1["schema"] == f"{sandbox.api_url}/v1/schemas/1"
    for lst in (
        "/v1/workspaces",
        "/v1/organizations",
        "/v1/schemas",
        "/v1/documents",
        "/v1/hooks",
        "/v1/users",
    ):
        body = sandbox_client.get(lst).json()
        assert set(body) == {"pagination", "results"}, lst


def test_queue_object_and_crud_codes(sandbox: SandboxServer, sandbox_client: httpx.Client) -> None:
    sandbox.seed(queue=1, count=3, status="exported")
    q = sandbox_client.get("/v1/queues/1").json()
    assert list(q["counts"]) == [
        "importing",
        "split",
        "failed_import",
        "to_review",
        "reviewing",
        "confirmed",
        "exporting",
        "postponed",
        "failed_export",
        "exported",
        "deleted",
        "purged",
        "rejected",
    ]
    assert q["counts"]["exported"] == 3
    for key in (
        "use_confirmed_state",
        "automation_level",
        "automation_enabled",
        "settings",
        "status",
        "session_timeout",
        "workspace",
        "schema",
        "hooks",
    ):
        assert key in q
    created = sandbox_client.post(
        "/v1/queues",
        json={
            "name": "New",
            "schema": f"{sandbox.api_url}/v1/schemas/1",
            "workspace": f"{sandbox.api_url}/v1/workspaces/1",
            "automation_level": "always",
        },
    )
    assert created.status_code == 201
    qid = created.json()["id"]
    assert created.json()["status"] == "active"
    assert (
        f"{sandbox.api_url}/v1/queues/{qid}"
        in sandbox_client.get("/v1/workspaces/1").json()["queues"]
    )
    patched = sandbox_client.patch(f"/v1/queues/{qid}", json={"use_confirmed_state": True})
    assert patched.status_code == 200 and patched.json()["use_confirmed_state"] is True
    assert (
        sandbox_client.patch(
            f"/v1/queues/{qid}", json={"automation_level": "sometimes"}
        ).status_code
        == 400
    )
    assert sandbox_client.delete(f"/v1/queues/{qid}").status_code == 202
    assert sandbox_client.get(f"/v1/queues/{qid}").status_code == 404
