"""REST delivery over TLS: private CA, server verification and client certificates (mTLS).

The ERP app is served by uvicorn with TLS enabled; certificates are generated on the fly.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rossflow.delivery.rest import (
    RestEndpoint,
    RestRetryPolicy,
    TlsConfig,
    deliver_once,
)
from rossflow.delivery.rest_bodies import (
    JsonBody,
)
from rossflow.delivery.rest_result import (
    DeliveryError,
)
from rossflow.localstack.erp import ErpState, create_app


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    cn: str,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("rossflow test CA")
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    server, server_key = _issue(ca_key, ca_name, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, san)
    client, client_key = _issue(ca_key, ca_name, "rossflow", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(server.public_bytes(pem))
    (d / "client.pem").write_bytes(client.public_bytes(pem))
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=_write_key(server_key, d / "server.key"),
        client_cert=d / "client.pem",
        client_key=_write_key(client_key, d / "client.key"),
    )


@pytest.fixture
def tls_erp(pki: Pki) -> Iterator[str]:
    """The ERP app behind HTTPS that requires a client certificate signed by the test CA."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(ErpState()),
        log_level="critical",
        lifespan="off",
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "TLS ERP did not start"
        time.sleep(0.01)
    yield f"https://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
    sock.close()


NO_RETRY = RestRetryPolicy(max_attempts=1)


def _ep(url: str, tls: TlsConfig) -> RestEndpoint:
    return RestEndpoint(url=f"{url}/api/invoices", tls=tls, retry=NO_RETRY)


async def test_mutual_tls_with_private_ca(tls_erp: str, pki: Pki) -> None:
    tls = TlsConfig(
        verify=str(pki.ca), client_cert=str(pki.client_cert), client_key=str(pki.client_key)
    )
    result = await deliver_once(_ep(tls_erp, tls), JsonBody({"a": 1}), idempotency_key="k")
    assert result.status_code == 201
    assert result.url.startswith("https://127.0.0.1:")


async def test_unknown_ca_is_rejected_by_default(tls_erp: str, pki: Pki) -> None:
    tls = TlsConfig(client_cert=str(pki.client_cert), client_key=str(pki.client_key))
    ep = _ep(tls_erp, tls).model_copy(update={"retry": RestRetryPolicy(max_attempts=3)})
    with pytest.raises(DeliveryError) as info:
        await deliver_once(ep, JsonBody({}), idempotency_key="k")
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert info.value.attempts == 1  # an untrusted certificate is not retried


async def test_missing_client_certificate_is_rejected(tls_erp: str, pki: Pki) -> None:
    with pytest.raises(DeliveryError):
        await deliver_once(
            _ep(tls_erp, TlsConfig(verify=str(pki.ca))), JsonBody({}), idempotency_key="k"
        )


async def test_verification_opt_out(tls_erp: str, pki: Pki) -> None:
    tls = TlsConfig(verify=False, client_cert=str(pki.client_cert), client_key=str(pki.client_key))
    result = await deliver_once(_ep(tls_erp, tls), JsonBody({}), idempotency_key="k")
    assert result.status_code == 201
