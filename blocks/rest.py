"""Prefect block for a REST target (an ERP API): base URL, authentication, TLS, patience."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from rossflow.delivery.rest import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    NoAuth,
    OAuth2ClientCredentials,
    RestEndpoint,
    RestRetryPolicy,
    TlsConfig,
)
from rossflow.http import Timeouts, join_url


class RestTarget(Block):
    """An HTTP API that receives exported documents.

    Pipeline steps name the block in ``target:``; a relative ``request.url`` in the step is
    joined to ``base_url``.
    """

    _block_type_name = "Rossflow REST Target"
    _block_type_slug = "rossflow-rest-target"
    _description = "An ERP/AP REST endpoint with its authentication and TLS settings."

    base_url: str = Field(description="e.g. https://erp.example.com")
    auth: Literal["none", "basic", "bearer", "api_key", "oauth2"] = "none"
    username: str | None = Field(default=None, description="basic: user name")
    password: SecretStr | None = Field(default=None, description="basic: password")
    token: SecretStr | None = Field(default=None, description="bearer: static token")
    api_key_header: str = "X-API-Key"
    api_key: SecretStr | None = None
    token_url: str | None = Field(default=None, description="oauth2: token endpoint")
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every call.")
    verify: bool = Field(default=True, description="Verify the server certificate.")
    ca_bundle: str | None = Field(default=None, description="Path of a CA bundle to trust.")
    client_cert: str | None = Field(default=None, description="Path of a client certificate.")
    client_key: str | None = Field(default=None, description="Path of the client key.")
    connect_timeout_s: float = 10.0
    read_timeout_s: float = Field(default=120.0, description="ERPs are slow: be generous.")
    max_attempts: int = Field(default=5, description="Retries on 408/429/5xx and network errors.")
    honours_idempotency_key: bool = Field(
        default=True,
        description="The ERP answers a repeat with the same Idempotency-Key with the first "
        "result (no second document). If not, steps default to 'idempotency: none' (a call "
        "with an unknown outcome is never resent); give them 'idempotency: reconcile' and a "
        "lookup to resolve it automatically.",
    )

    def endpoint(self, url: str | None = None, method: str = "POST") -> RestEndpoint:
        auth: NoAuth | BasicAuth | BearerAuth | ApiKeyAuth | OAuth2ClientCredentials
        if self.auth == "basic":
            auth = BasicAuth(username=self.username or "", password=self.password or SecretStr(""))
        elif self.auth == "bearer":
            auth = BearerAuth(token=self.token or SecretStr(""))
        elif self.auth == "api_key":
            auth = ApiKeyAuth(header=self.api_key_header, value=self.api_key or SecretStr(""))
        elif self.auth == "oauth2":
            auth = OAuth2ClientCredentials(
                token_url=self.token_url or "",
                client_id=self.client_id or "",
                client_secret=self.client_secret or SecretStr(""),
                scope=self.scope,
            )
        else:
            auth = NoAuth()
        return RestEndpoint(
            url=join_url(self.base_url, url),
            method=method,  # type: ignore[arg-type]
            name=self._block_document_name,
            headers=dict(self.headers),
            auth=auth,
            tls=TlsConfig(
                verify=self.ca_bundle or self.verify,
                client_cert=self.client_cert,
                client_key=self.client_key,
            ),
            timeouts=Timeouts(
                connect=self.connect_timeout_s,
                read=self.read_timeout_s,
                write=self.read_timeout_s,
            ),
            retry=RestRetryPolicy(max_attempts=self.max_attempts),
        )
