"""Rossum's file-storage ``direct_export``, done locally with rossflow's SFTP/S3 code."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from rossflow.export.errors import StepError
from rossflow.export.rp.base import DocLike, FileUpload, RpDoc
from rossflow.export.rp.http import EncodedRequest, response_object
from rossflow.export.rp.templates import same_origin

DIRECT_EXPORT_PATH = "/svc/file-storage-export/api/v1/direct_export"


def is_direct_export(url: str, base_url: str) -> bool:
    """A call_api request to Rossum's own direct_export endpoint."""
    return urlsplit(url).path.rstrip("/").endswith(DIRECT_EXPORT_PATH) and same_origin(
        url, base_url
    )


async def direct_export(
    client: Any,
    upload: FileUpload,
    step_name: str,
    doc: DocLike,
    state: RpDoc,
    encoded: EncodedRequest,
) -> dict[str, Any]:
    """Rossum's file-storage ``direct_export``, done locally with rossflow's SFTP/S3 code.

    Writes the annotation's original document as ``<filename><extension of the original>``
    into ``settings.export_rule.path_to_directory``.
    """
    content = encoded.meta.get("content")
    if not isinstance(content, Mapping):
        raise StepError("direct_export needs a JSON object as content", step=step_name)
    settings = content.get("settings") or {}
    creds = dict(settings.get("credentials") or {})
    rule = settings.get("export_rule") or {}
    secrets = {k: v for k, v in (content.get("secrets") or {}).items() if v}
    kind = str(creds.get("type") or secrets.get("type") or "sftp").lower()
    collision = rule.get("filename_collision")
    if isinstance(collision, Mapping):
        collision = "replace" if collision.get("replace") else "error"
    collision = str(collision or "replace")
    document = state.payload.get("document") or {}
    original = str(document.get("original_file_name") or "")
    extension = original[original.rfind(".") :] if "." in original else ""
    name = str(content.get("filename") or original.rsplit(".", 1)[0] or doc.annotation_id)
    directory = str(rule.get("path_to_directory") or "/").rstrip("/") or ""
    path = f"{directory}/{name}{extension}"
    if "payload" in content and content["payload"] is not None:
        try:
            base64.b64decode(str(content["payload"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise StepError(
                "direct_export: 'payload' is not base64 (use {base64(payload)})",
                step=step_name,
            ) from exc
    data = await client.download_document(str(document.get("url") or ""))
    mime = str(document.get("mime_type") or "application/octet-stream")
    started = time.monotonic()
    target = _file_target(kind, creds, secrets, step_name)
    try:
        final = await upload(kind, target, path, data, mime, collision)
    except StepError:
        raise
    except Exception as exc:
        raise StepError(
            f"direct_export upload of {path} failed: {exc}", step=step_name, target=kind
        ) from exc
    reply = httpx.Response(
        200,
        json={"status": "ok", "path": final, "type": kind},
        request=httpx.Request("POST", encoded.url),
    )
    return response_object(reply, time.monotonic() - started)


def _file_target(kind: str, creds: Mapping[str, Any], secrets: Mapping[str, Any], step: str) -> Any:
    """Connection objects of rossflow's delivery code from direct_export credentials."""
    if kind == "s3":
        from prefect_aws import AwsCredentials, S3Bucket
        from prefect_aws.client_parameters import AwsClientParameters

        if not creds.get("bucket_name"):
            raise StepError("direct_export to S3 needs settings.credentials.bucket_name", step=step)
        params = (
            AwsClientParameters(endpoint_url=creds["endpoint_url"])
            if creds.get("endpoint_url")
            else AwsClientParameters()
        )
        aws = AwsCredentials(
            aws_access_key_id=secrets.get("access_key_id"),
            aws_secret_access_key=secrets.get("secret_access_key"),
            region_name=creds.get("region") or "us-east-1",
            aws_client_parameters=params,
        )
        return S3Bucket(bucket_name=str(creds["bucket_name"]), credentials=aws)
    if kind != "sftp":
        raise StepError(
            f"direct_export: unknown credentials.type {kind!r} (use sftp or s3)", step=step
        )
    from rossflow.delivery.sftp import SftpConnectionInfo

    if not creds.get("host"):
        raise StepError("direct_export to SFTP needs settings.credentials.host", step=step)
    key = secrets.get("ssh_key")
    return SftpConnectionInfo(
        host=str(creds["host"]),
        port=int(creds.get("port") or 22),
        username=str(creds.get("username") or ""),
        password=SecretStr(str(secrets["password"])) if secrets.get("password") else None,
        private_key=SecretStr(str(key).replace("\\n", "\n")) if key else None,
        known_hosts=str(creds.get("known_hosts") or ""),
        verify_host_key=bool(creds.get("verify_host_key", True)),
    )
