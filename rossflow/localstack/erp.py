"""A scriptable stand-in for the downstream ERP, so exports can be tested without a real one.

Accepts JSON, XML, form and multipart POST/PUT/PATCH to any path under ``/api/`` and answers with
configurable status codes, bodies and latency. It records everything it received and honours the
``Idempotency-Key`` header like a well-behaved ERP would: a repeat with the same key gets the first
answer back and is counted as a duplicate, never as a new document.

Control endpoints (all JSON)::

    GET    /_erp/config      current config
    POST   /_erp/config      replace the config (missing keys take their defaults)
    PATCH  /_erp/config      merge top-level keys into the config
    GET    /_erp/received    list of recorded requests
    DELETE /_erp/received    forget requests, stats, idempotency keys (config is kept)
    GET    /_erp/stats       {"requests", "documents", "duplicates", "token_requests", "by_status",
                              "max_in_flight" (most /api/ requests being answered at once)}
    POST   /_erp/revoke      invalidate every issued OAuth2 token (to test 401 -> refresh)
    POST   /oauth/token      OAuth2 client-credentials token endpoint

Config format (every key optional)::

    {
      "latency_s": 0.0,                         # added to every /api/ answer
      "default": RESPONSE,                      # default 201 {"id": "{{id}}", "status": "created"}
      "routes": {"/api/invoices": RESPONSE,     # exact path, "METHOD /path", or fnmatch pattern
                 "PUT /api/orders/*": RESPONSE},
      "script": [RESPONSE + {"times": 2, "path": "/api/x"}],   # consumed first, in order
      "fail_when_body_contains": {"INV-BAD": RESPONSE},        # raw body substring -> answer
      "require_auth": {"type": "none"}
                    | {"type": "basic", "username": "u", "password": "p"}
                    | {"type": "bearer", "token": "t"}         # static token
                    | {"type": "oauth2"}                       # token issued by /oauth/token
                    | {"type": "api_key", "header": "X-API-Key", "value": "k"}
                    | {"type": "oauth1", "consumer_key": "ck", "consumer_secret": "cs",
                       "token_key": "tk", "token_secret": "ts"},   # signature checked (oauthlib)
      "oauth": {"client_id": "rossflow", "client_secret": "secret", "expires_in": 3600,
                "jwt_public_key": "PEM"},  # also accept JWT client assertions signed by it
      "echo_errors": false,                     # error answers (4xx/5xx) echo the request's
                                                # headers and body, like debug-mode gateways
      "ignore_idempotency_key": false,          # book every request, like most real ERPs
      "chaos": {"rate": 0.2, "after_booking": 0.5, "status": 503, "seed": 1}
    }       # fail a share of the POSTs (after booking for a share of those) with ``status``

    RESPONSE = {"status": 201, "body": {...} | [...] | "text or XML", "content_type": "...",
                "headers": {"Retry-After": "1"}, "latency_s": 0.5,
                "books": true}    # a failure answer given after the document was booked

Lookup (for ``idempotency: reconcile``): a ``GET /api/<path>?field=value`` that no route or
script answers returns ``{"results": [{"id": ..., <JSON body fields>}]}``: the documents booked
by JSON requests to that path whose body has every queried field equal to the given value.

Strings in bodies and headers are templated: ``{{id}}`` (a new ERP document id like
``ERP-000123``), ``{{path}}``, ``{{method}}``, ``{{idempotency_key}}``, ``{{request_no}}``.

Answer precedence: auth check (401) -> idempotent replay -> script -> fail_when_body_contains ->
routes -> default. Only final answers (2xx and 4xx except 408/429) are remembered per
idempotency key, so a client retrying after a 503 gets a fresh answer, as with real APIs.

Over 600 lines but one concept: the ERP stand-in. The config, the recorded state and the
answer precedence above are one behaviour that tests script as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import fnmatch
import hashlib
import json
import random
import secrets
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rossflow.localstack.uvicorn_thread import UvicornThread

DEFAULT_RESPONSE: dict[str, Any] = {
    "status": 201,
    "body": {"id": "{{id}}", "status": "created"},
    "content_type": "application/json",
}

DEFAULT_CONFIG: dict[str, Any] = {
    "latency_s": 0.0,
    "default": DEFAULT_RESPONSE,
    "routes": {},
    "script": [],
    "fail_when_body_contains": {},
    "require_auth": {"type": "none"},
    "oauth": {"client_id": "rossflow", "client_secret": "secret", "expires_in": 3600},
    "echo_errors": False,
    "ignore_idempotency_key": False,
    "chaos": None,
}

# Answers a client may legitimately retry; they are not pinned to an idempotency key.
_TRANSIENT_STATUSES = frozenset({408, 429})
_REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _render(value: Any, variables: dict[str, str]) -> Any:
    """Substitute ``{{name}}`` placeholders in every string inside ``value``."""
    if isinstance(value, str):
        for name, replacement in variables.items():
            value = value.replace("{{" + name + "}}", replacement)
        return value
    if isinstance(value, list):
        return [_render(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, variables) for k, v in value.items()}
    return value


class ErpState:
    """Config, recorded requests and counters; shared by the app and the in-process controller.

    All mutation happens under one lock so tests may configure the server from their own thread
    while uvicorn's loop serves requests.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.last_assertion: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.config: dict[str, Any] = copy.deepcopy(DEFAULT_CONFIG)
        self._script_left: list[int] = []
        self._doc_counter = 0
        self._request_counter = 0
        self.received: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self._idempotent: dict[str, tuple[int, dict[str, str], bytes, str]] = {}
        # documents booked: id, path and JSON body (what a lookup searches)
        self.booked: list[dict[str, Any]] = []
        self._chaos = random.Random(0)
        self._tokens: dict[str, float] = {}
        self.reset()
        if config:
            self.configure(config)

    # -- control ---------------------------------------------------------------------------
    def configure(self, config: dict[str, Any], *, merge: bool = False) -> dict[str, Any]:
        """Replace (or merge into) the config; resets script progress."""
        with self._lock:
            base = self.config if merge else DEFAULT_CONFIG
            new = copy.deepcopy(base)
            new.update(copy.deepcopy(config))
            if "oauth" in config:
                new["oauth"] = {**DEFAULT_CONFIG["oauth"], **config["oauth"]}
            self.config = new
            self._script_left = [int(e.get("times", 1)) for e in new["script"]]
            self._chaos = random.Random((new.get("chaos") or {}).get("seed", 0))
            return copy.deepcopy(new)

    def reset(self) -> None:
        """Forget requests, counters and idempotency keys (config and tokens stay)."""
        with self._lock:
            self.received = []
            self._idempotent = {}
            self.booked = []
            self._request_counter = 0
            self.stats = {
                "requests": 0,
                "documents": 0,
                "duplicates": 0,
                "token_requests": 0,
                "by_status": Counter(),
                "max_in_flight": 0,
            }
            self._in_flight = 0
            self._script_left = [int(e.get("times", 1)) for e in self.config["script"]]

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def enter(self) -> None:
        """A request arrived: counts how many are being answered at once (``max_in_flight``)."""
        with self._lock:
            self._in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def snapshot_received(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.received)

    def snapshot_booked(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self.booked)

    def snapshot_stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self.stats)
            out["by_status"] = {str(k): v for k, v in sorted(self.stats["by_status"].items())}
            return out

    # -- OAuth2 ----------------------------------------------------------------------------
    def issue_token(
        self, client_id: str | None, client_secret: str | None
    ) -> dict[str, Any] | None:
        with self._lock:
            self.stats["token_requests"] += 1
            oauth = self.config["oauth"]
            if client_id != oauth["client_id"] or not secrets.compare_digest(
                (client_secret or "").encode(), str(oauth["client_secret"]).encode()
            ):
                return None
            token = "erp-" + secrets.token_urlsafe(24)
            expires_in = float(oauth.get("expires_in", 3600))
            self._tokens[token] = time.monotonic() + expires_in
            out: dict[str, Any] = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(expires_in) if expires_in == int(expires_in) else expires_in,
            }
            if oauth.get("scope"):
                out["scope"] = oauth["scope"]
            return out

    def verify_assertion(self, assertion: str, audience: str) -> str | None:
        """Client id (``iss``) of a JWT client assertion signed with ``oauth.jwt_public_key``."""
        from joserfc import jwt
        from joserfc.errors import JoseError
        from joserfc.jwk import RSAKey

        pem = self.config["oauth"].get("jwt_public_key")
        if not pem:
            return None
        try:
            token = jwt.decode(
                assertion,
                RSAKey.import_key(pem),
                algorithms=["PS256", "PS384", "PS512", "RS256", "RS384", "RS512"],
            )
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.config["oauth"]["client_id"]},
                aud={"essential": True, "value": audience},
                exp={"essential": True},
            ).validate(token.claims)
        except (JoseError, ValueError):
            return None
        self.last_assertion = {"header": dict(token.header), "claims": dict(token.claims)}
        return str(token.claims["iss"])

    def _token_valid(self, token: str) -> bool:
        expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    # -- request handling ------------------------------------------------------------------
    def _authorized(self, headers: dict[str, str], method: str = "GET", url: str = "") -> bool:
        auth = self.config.get("require_auth") or {"type": "none"}
        kind = auth.get("type", "none")
        header = headers.get("authorization", "")
        if kind == "none":
            return True
        if kind == "oauth1":
            return _oauth1_valid(auth, method, url, header)
        if kind == "basic":
            if not header.lower().startswith("basic "):
                return False
            try:
                user, _, pwd = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return user == auth.get("username") and secrets.compare_digest(
                pwd.encode(), str(auth.get("password", "")).encode()
            )
        if kind in ("bearer", "oauth2"):
            if not header.lower().startswith("bearer "):
                return False
            token = header[7:].strip()
            if kind == "oauth2":
                return self._token_valid(token)
            return secrets.compare_digest(token.encode(), str(auth.get("token", "")).encode())
        if kind == "api_key":
            value = headers.get(str(auth.get("header", "X-API-Key")).lower(), "")
            return secrets.compare_digest(value.encode(), str(auth.get("value", "")).encode())
        return False

    def _lookup(self, path: str, method: str, url: str) -> dict[str, Any] | None:
        """A ``GET`` with a query that no route or script answers: search the booked documents."""
        query = dict(parse_qsl(urlsplit(url).query))
        if method != "GET" or not query or any(self._script_left):
            return None
        for pattern in self.config["routes"]:
            method_part, _, path_part = pattern.partition(" ")
            candidate = path_part if path_part else pattern
            if (not path_part or method_part.upper() == method) and fnmatch.fnmatchcase(
                path, candidate
            ):
                return None
        results = [
            {"id": doc["id"], **doc["json"]}
            for doc in self.booked
            if doc["path"] == path
            and isinstance(doc["json"], dict)
            and all(str(doc["json"].get(k)) == v for k, v in query.items())
        ]
        return {"status": 200, "body": {"count": len(results), "results": results}, "lookup": True}

    def _pick_response(self, path: str, method: str, body: bytes) -> dict[str, Any]:
        cfg = self.config
        for i, entry in enumerate(cfg["script"]):
            if self._script_left[i] <= 0:
                continue
            if entry.get("path") and not fnmatch.fnmatchcase(path, entry["path"]):
                continue
            self._script_left[i] -= 1
            return entry
        chaos = cfg.get("chaos")
        if chaos and method == "POST" and self._chaos.random() < float(chaos.get("rate", 0)):
            books = self._chaos.random() < float(chaos.get("after_booking", 0))
            status = int(chaos.get("status", 503))
            return {"status": status, "body": {"error": "chaos"}, "books": books}
        for needle, response in cfg["fail_when_body_contains"].items():
            if needle.encode() in body:
                return response
        routes: dict[str, Any] = cfg["routes"]
        for key in (f"{method} {path}", path):
            if key in routes:
                return routes[key]
        for pattern, response in routes.items():
            method_part, _, path_part = pattern.partition(" ")
            if path_part and method_part.upper() == method:
                if fnmatch.fnmatchcase(path, path_part):
                    return response
            elif fnmatch.fnmatchcase(path, pattern):
                return response
        return cfg["default"]

    def handle(
        self,
        *,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        summary: dict[str, Any],
        invalid: str | None = None,
        url: str = "",
    ) -> tuple[int, dict[str, str], bytes, str, float]:
        """Decide the answer for one /api/ request and record it.

        ``invalid`` names a parse error of the body (malformed JSON/XML): answered with 400 after
        the auth check. Returns status, headers, body, content type and the latency to apply.
        """
        with self._lock:
            self._request_counter += 1
            self.stats["requests"] += 1
            key = headers.get("idempotency-key")
            record: dict[str, Any] = {
                "request_no": self._request_counter,
                "time": time.time(),
                "method": method,
                "path": path,
                "content_type": headers.get("content-type", ""),
                "headers": {
                    k: ("***" if self._is_secret_header(k) else v)
                    for k, v in headers.items()
                    if k not in _REDACTED_HEADERS
                },
                "idempotency_key": key,
                "size": len(body),
                **summary,
            }
            latency = float(self.config.get("latency_s") or 0.0)
            duplicate = False
            document_id: str | None = None
            if not self._authorized(headers, method, url):
                status, out_headers, out_body, ctype = (
                    401,
                    {"WWW-Authenticate": "Bearer" if "bearer" in self._auth_kind() else "Basic"},
                    b'{"error": "unauthorized"}',
                    "application/json",
                )
            elif invalid is not None:
                status, out_headers, out_body, ctype = (
                    400,
                    {},
                    json.dumps({"error": invalid}).encode(),
                    "application/json",
                )
            elif key and key in self._idempotent and not self.config.get("ignore_idempotency_key"):
                status, out_headers, out_body, ctype = self._idempotent[key]
                duplicate = True
                self.stats["duplicates"] += 1
            else:
                spec = self._lookup(path, method, url) or self._pick_response(path, method, body)
                if spec.get("latency_s") is not None:
                    latency = float(spec["latency_s"])
                status = int(spec.get("status", 200))
                variables = {
                    "path": path,
                    "method": method,
                    "idempotency_key": key or "",
                    "request_no": str(self._request_counter),
                }
                raw_body = spec.get("body", "")
                template = json.dumps([raw_body, spec.get("headers", {})])
                books = (200 <= status < 300 or bool(spec.get("books"))) and not spec.get("lookup")
                if "{{id}}" in template or books:
                    self._doc_counter += 1
                    document_id = f"ERP-{self._doc_counter:06d}"
                    variables["id"] = document_id
                rendered = _render(raw_body, variables)
                if isinstance(rendered, dict | list):
                    out_body = json.dumps(rendered).encode()
                    ctype = spec.get("content_type", "application/json")
                elif rendered is None:
                    out_body, ctype = b"", spec.get("content_type", "text/plain")
                else:
                    out_body = str(rendered).encode()
                    ctype = spec.get("content_type", "text/plain; charset=utf-8")
                out_headers = {
                    str(k): str(v) for k, v in _render(spec.get("headers", {}), variables).items()
                }
                if document_id and books:
                    self.stats["documents"] += 1
                    self.booked.append(
                        {"id": document_id, "path": path, "json": summary.get("json")}
                    )
                final = status < 500 and status not in _TRANSIENT_STATUSES
                if key and final:
                    self._idempotent[key] = (status, out_headers, out_body, ctype)
            if status >= 400 and self.config.get("echo_errors"):
                out_body, ctype = _echo(method, path, headers, body, out_body), "application/json"
            self.stats["by_status"][status] += 1
            record.update({"status": status, "duplicate": duplicate, "document_id": document_id})
            self.received.append(record)
            return status, out_headers, out_body, ctype, latency

    def _auth_kind(self) -> str:
        return str((self.config.get("require_auth") or {}).get("type", "none"))

    def _is_secret_header(self, name: str) -> bool:
        auth = self.config.get("require_auth") or {}
        return auth.get("type") == "api_key" and name == str(auth.get("header", "")).lower()


def _oauth1_valid(auth: dict[str, Any], method: str, url: str, header: str) -> bool:
    """Verify an OAuth 1.0a ``Authorization`` header (HMAC-SHA1/SHA256) with oauthlib."""
    from oauthlib.oauth1 import RequestValidator, ResourceEndpoint

    class Validator(RequestValidator):  # type: ignore[misc]
        enforce_ssl = False
        allowed_signature_methods = ("HMAC-SHA256", "HMAC-SHA1")
        dummy_client = "dummy"
        dummy_access_token = "dummy"  # noqa: S105 - oauthlib's timing-safe placeholder

        def check_client_key(self, key: str) -> bool:
            return bool(key)

        def check_access_token(self, token: str) -> bool:
            return bool(token)

        def check_nonce(self, nonce: str) -> bool:
            return bool(nonce)

        def check_realms(self, realms: Any) -> bool:
            return True

        def validate_client_key(self, key: str, request: Any) -> bool:
            return key == auth.get("consumer_key")

        def validate_access_token(self, key: str, token: str, request: Any) -> bool:
            return token == auth.get("token_key")

        def validate_timestamp_and_nonce(self, *args: Any, **kwargs: Any) -> bool:
            return True

        def validate_realms(self, *args: Any, **kwargs: Any) -> bool:
            return True

        def get_client_secret(self, key: str, request: Any) -> str:
            return str(auth.get("consumer_secret", ""))

        def get_access_token_secret(self, key: str, token: str, request: Any) -> str:
            return str(auth.get("token_secret", ""))

    if not header.startswith("OAuth "):
        return False
    endpoint = ResourceEndpoint(Validator())
    ok, _ = endpoint.validate_protected_resource_request(
        url, http_method=method, headers={"Authorization": header}
    )
    return bool(ok)


def _echo(method: str, path: str, headers: dict[str, str], body: bytes, answer: bytes) -> bytes:
    """An error answer that quotes the request verbatim, credentials included (echo mode)."""
    return json.dumps(
        {
            "error": answer.decode("utf-8", "replace"),
            "request": {
                "method": method,
                "path": path,
                "headers": headers,
                "body": body.decode("utf-8", "replace"),
            },
        }
    ).encode()


async def _summarize_body(request: Request, body: bytes) -> tuple[dict[str, Any], str | None]:
    """Describe the payload for ``/_erp/received``; second item names a malformed JSON/XML body."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        parts: list[dict[str, Any]] = []
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, str):
                    parts.append({"name": name, "value": value})
                else:
                    content = await value.read()
                    parts.append(
                        {
                            "name": name,
                            "filename": value.filename,
                            "content_type": value.content_type,
                            "size": len(content),
                            "sha256_prefix": hashlib.sha256(content).hexdigest()[:16],
                        }
                    )
        return {"parts": parts, "body": None}, None
    if ctype.startswith("application/x-www-form-urlencoded"):
        async with request.form() as form:
            fields = {k: str(v) for k, v in form.multi_items()}
        return {"form": fields, "body": body.decode("utf-8", "replace")}, None
    text = body.decode("utf-8", "replace")
    summary: dict[str, Any] = {"body": text}
    if "json" in ctype:
        try:
            summary["json"] = json.loads(body or b"null")
        except ValueError as exc:
            return summary, f"invalid JSON: {exc}"
    elif "xml" in ctype:
        try:
            from lxml import etree

            parser = etree.XMLParser(resolve_entities=False, no_network=True)
            etree.fromstring(body, parser)
        except ImportError:
            pass
        except Exception as exc:
            return summary, f"invalid XML: {exc}"
    return summary, None


def create_app(state: ErpState) -> Starlette:
    """The ASGI app serving ``state`` (exposed so it can also be served with TLS)."""

    async def api(request: Request) -> Response:
        state.enter()
        try:
            body = await request.body()
            summary, invalid = await _summarize_body(request, body)
            headers = {k.lower(): v for k, v in request.headers.items()}
            status, out_headers, out_body, ctype, latency = state.handle(
                method=request.method,
                path=request.url.path,
                headers=headers,
                body=body,
                summary=summary,
                invalid=invalid,
                url=str(request.url),
            )
            if latency > 0:
                await asyncio.sleep(latency)
        finally:
            state.leave()
        return Response(out_body, status_code=status, headers=out_headers, media_type=ctype)

    async def config(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(state.config)
        payload = await request.json()
        if not isinstance(payload, dict):
            return JSONResponse({"error": "config must be a JSON object"}, status_code=400)
        return JSONResponse(state.configure(payload, merge=request.method == "PATCH"))

    async def received(request: Request) -> Response:
        if request.method == "DELETE":
            state.reset()
            return Response(status_code=204)
        return JSONResponse(state.snapshot_received())

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot_stats())

    async def revoke(request: Request) -> Response:
        state.revoke_tokens()
        return Response(status_code=204)

    async def token(request: Request) -> Response:
        async with request.form() as form:
            fields = {k: str(v) for k, v in form.items()}
        client_id, client_secret = fields.get("client_id"), fields.get("client_secret")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                client_id, _, client_secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                client_id = None
        assertion = fields.get("client_assertion")
        if assertion and fields.get("grant_type") == "client_credentials":
            client_id = state.verify_assertion(assertion, str(request.url))
            if client_id is None:
                state.issue_token(None, None)  # still counted
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            client_secret = str(state.config["oauth"]["client_secret"])
        if fields.get("grant_type") != "client_credentials":
            state.issue_token(None, None)  # still counted
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        issued = state.issue_token(client_id, client_secret)
        if issued is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse(issued, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    methods = ["POST", "PUT", "PATCH", "DELETE", "GET"]
    return Starlette(
        routes=[
            Route("/api/{rest:path}", api, methods=methods),
            Route("/_erp/config", config, methods=["GET", "POST", "PATCH"]),
            Route("/_erp/received", received, methods=["GET", "DELETE"]),
            Route("/_erp/stats", stats, methods=["GET"]),
            Route("/_erp/revoke", revoke, methods=["POST"]),
            Route("/_erp/health", health, methods=["GET"]),
            Route("/oauth/token", token, methods=["POST"]),
        ]
    )


class ErpServer:
    """The ERP stand-in on a background uvicorn thread; control it in-process or over HTTP."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.state = ErpState(config)
        self.app = create_app(self.state)
        self._thread = UvicornThread(self.app, host=host, port=port, name="erp")

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def port(self) -> int:
        return self._thread.port

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/token"

    def start(self) -> ErpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def serve_forever(self) -> None:
        self._thread.serve_forever()

    def configure(self, config: dict[str, Any], *, merge: bool = False) -> dict[str, Any]:
        return self.state.configure(config, merge=merge)

    def received(self) -> list[dict[str, Any]]:
        return self.state.snapshot_received()

    def stats(self) -> dict[str, Any]:
        return self.state.snapshot_stats()

    def booked(self) -> list[dict[str, Any]]:
        """Documents booked (id, path, JSON body), including those booked before a failure."""
        return self.state.snapshot_booked()

    def reset(self) -> None:
        self.state.reset()

    def revoke_tokens(self) -> None:
        self.state.revoke_tokens()

    def __enter__(self) -> ErpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(argv: list[str] | None = None) -> int:
    """CLI: ``rossflow erp --host 127.0.0.1 --port 8085 [--config erp.json]``."""
    parser = argparse.ArgumentParser(prog="rossflow erp", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--config", help="JSON file with the initial config")
    args = parser.parse_args(argv)
    config = None
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            config = json.load(fh)
    server = ErpServer(args.host, args.port, config=config)
    print(f"ERP stand-in listening on {server.url} (API under /api/, control under /_erp/)")
    print(f"OAuth2 token endpoint: {server.token_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
