"""S3 delivery (and listing/reading/moving helpers for the ingest side) via prefect-aws blocks.

Everything goes through the client of the ``S3Bucket`` block's own credentials
(``bucket.credentials.get_s3_client()``), so what is configured in the block (region, endpoint
URL for MinIO/moto, TLS verification, botocore config) is what is used.

Keys: callers pass keys relative to the block's ``bucket_folder`` (leading slashes are dropped);
full keys that already start with ``bucket_folder`` are accepted too, so keys returned by
:func:`list_objects` (full keys) can be handed straight back. ``S3Object.key`` is the full key,
``S3Object.name`` the part below ``bucket_folder``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from rossflow.delivery.sftp import Collision, PutResult

if TYPE_CHECKING:
    from prefect_aws import S3Bucket


class S3DeliveryError(Exception):
    """An S3 operation failed; names bucket and key, never credentials."""


class S3ObjectExistsError(S3DeliveryError, FileExistsError):
    """The key exists and the collision mode is ``error``."""


@dataclass(frozen=True)
class S3Object:
    key: str
    name: str
    size: int
    last_modified: datetime | None
    etag: str | None


@dataclass(frozen=True)
class S3PutResult(PutResult):
    bucket: str = ""
    etag: str | None = None
    version_id: str | None = None


def s3_client(bucket: S3Bucket) -> Any:
    """The block's own boto3 S3 client (cached by prefect-aws per credentials; thread-safe)."""
    credentials = bucket.credentials
    getter = getattr(credentials, "get_s3_client", None)
    return getter() if getter is not None else credentials.get_client("s3")


def resolve_key(bucket: S3Bucket, key: str) -> str:
    """Full object key for ``key`` below the block's ``bucket_folder``."""
    key = key.lstrip("/")
    folder = (bucket.bucket_folder or "").strip("/")
    if not folder or key == folder or key.startswith(folder + "/"):
        return key
    return posixpath.join(folder, key)


def _relative(bucket: S3Bucket, key: str) -> str:
    folder = (bucket.bucket_folder or "").strip("/")
    if folder and key.startswith(folder + "/"):
        return key[len(folder) + 1 :]
    return key


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_not_found(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound") or status == 404


def head_object(bucket: S3Bucket, key: str) -> dict[str, Any] | None:
    """``HeadObject`` result, or None when the key does not exist."""
    full = resolve_key(bucket, key)
    try:
        return dict(s3_client(bucket).head_object(Bucket=bucket.bucket_name, Key=full))
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise S3DeliveryError(
            f"HeadObject s3://{bucket.bucket_name}/{full} failed: {_error_code(exc)}"
        ) from exc


def object_exists(bucket: S3Bucket, key: str) -> bool:
    return head_object(bucket, key) is not None


def _numbered(key: str, n: int) -> str:
    stem, ext = posixpath.splitext(key)
    return f"{stem}-{n}{ext}"


def put_object(
    bucket: S3Bucket,
    key: str,
    data: bytes | IO[bytes],
    content_type: str = "application/octet-stream",
    collision: Collision = "replace",
    *,
    metadata: Mapping[str, str] | None = None,
) -> S3PutResult:
    """Write one object. S3 writes are atomic per object: readers see old or new, never partial.

    ``collision`` when the key exists (checked with ``HeadObject``): ``replace``, ``skip``,
    ``error`` (:class:`S3ObjectExistsError`) or ``rename`` to ``name-1.ext``, ``name-2.ext``...
    The non-replace modes also send ``If-None-Match: *`` so that a concurrent writer is not
    overwritten on stores that support conditional writes (AWS, MinIO, moto); stores that do not
    are detected and written to unconditionally.
    """
    if collision not in ("replace", "skip", "error", "rename"):
        raise ValueError(f"unknown collision mode {collision!r}")
    client = s3_client(bucket)
    requested = resolve_key(bucket, key)
    if not requested or requested.endswith("/"):
        raise ValueError(f"not an object key: {key!r}")
    # Exports are documents, not gigabytes: holding the body lets a conditional write be redone.
    body = bytes(data) if isinstance(data, bytes | bytearray) else data.read()
    final, number = requested, 0
    conditional = collision != "replace"
    for _ in range(1000):
        if collision != "replace" and head_object(bucket, final) is not None:
            if collision == "skip":
                return S3PutResult(final, requested, skipped=True, bucket=bucket.bucket_name)
            if collision == "error":
                raise S3ObjectExistsError(f"s3://{bucket.bucket_name}/{final} already exists")
            number += 1
            final = _numbered(requested, number)
            continue
        params: dict[str, Any] = {
            "Bucket": bucket.bucket_name,
            "Key": final,
            "Body": body,
            "ContentType": content_type,
        }
        if metadata:
            params["Metadata"] = dict(metadata)
        if conditional:
            params["IfNoneMatch"] = "*"
        try:
            response = client.put_object(**params)
        except ClientError as exc:
            code = _error_code(exc)
            if conditional and code in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                conditional = False  # store without conditional writes: head check only
                continue
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                continue  # lost a race: re-evaluate the collision with a fresh HeadObject
            raise S3DeliveryError(
                f"PutObject s3://{bucket.bucket_name}/{final} failed: {code or exc}"
            ) from exc
        return S3PutResult(
            final,
            requested,
            renamed=final != requested,
            bytes_written=len(body),
            bucket=bucket.bucket_name,
            etag=response.get("ETag"),
            version_id=response.get("VersionId"),
        )
    raise S3DeliveryError(f"no free key for s3://{bucket.bucket_name}/{requested}")


def iter_objects(
    bucket: S3Bucket,
    prefix: str = "",
    *,
    recursive: bool = True,
    page_size: int | None = None,
) -> Iterator[S3Object]:
    """Objects under ``prefix`` (relative to ``bucket_folder``), paginated lazily.

    ``recursive=False`` lists one "directory" level (delimiter ``/``), skipping sub-prefixes.
    """
    if prefix:
        full_prefix = resolve_key(bucket, prefix)
    else:
        folder = (bucket.bucket_folder or "").strip("/")
        full_prefix = f"{folder}/" if folder else ""
    params: dict[str, Any] = {"Bucket": bucket.bucket_name, "Prefix": full_prefix}
    if not recursive:
        params["Delimiter"] = "/"
    if page_size:
        params["PaginationConfig"] = {"PageSize": page_size}
    paginator = s3_client(bucket).get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(**params):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue  # "folder" marker objects
                yield S3Object(
                    key=key,
                    name=_relative(bucket, key),
                    size=int(item.get("Size", 0)),
                    last_modified=item.get("LastModified"),
                    etag=item.get("ETag"),
                )
    except ClientError as exc:
        raise S3DeliveryError(
            f"ListObjectsV2 s3://{bucket.bucket_name}/{full_prefix} failed: {_error_code(exc)}"
        ) from exc


def list_objects(
    bucket: S3Bucket, prefix: str = "", *, recursive: bool = True, page_size: int | None = None
) -> list[S3Object]:
    objects = iter_objects(bucket, prefix, recursive=recursive, page_size=page_size)
    return sorted(objects, key=lambda o: o.key)


def read_object(bucket: S3Bucket, key: str) -> bytes:
    full = resolve_key(bucket, key)
    try:
        response = s3_client(bucket).get_object(Bucket=bucket.bucket_name, Key=full)
    except ClientError as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(f"s3://{bucket.bucket_name}/{full} does not exist") from exc
        raise S3DeliveryError(
            f"GetObject s3://{bucket.bucket_name}/{full} failed: {_error_code(exc)}"
        ) from exc
    return bytes(response["Body"].read())


def open_object(bucket: S3Bucket, key: str) -> IO[bytes]:
    """A streaming body (file-like, ``.read()``); close it when done."""
    full = resolve_key(bucket, key)
    response = s3_client(bucket).get_object(Bucket=bucket.bucket_name, Key=full)
    return response["Body"]


def delete_object(bucket: S3Bucket, key: str) -> None:
    """Delete (idempotent: a missing key is not an error, as in S3 itself)."""
    full = resolve_key(bucket, key)
    try:
        s3_client(bucket).delete_object(Bucket=bucket.bucket_name, Key=full)
    except ClientError as exc:
        raise S3DeliveryError(
            f"DeleteObject s3://{bucket.bucket_name}/{full} failed: {_error_code(exc)}"
        ) from exc


def copy_object(
    bucket: S3Bucket,
    src: str,
    dst: str,
    *,
    dst_bucket: S3Bucket | None = None,
    collision: Collision = "replace",
) -> S3PutResult:
    """Server-side copy (same client: both buckets must be reachable with one set of
    credentials). Collision handling as in :func:`put_object` (head check, no conditional copy).
    """
    target = dst_bucket or bucket
    src_full = resolve_key(bucket, src)
    requested = resolve_key(target, dst)
    final, number = requested, 0
    while collision != "replace" and head_object(target, final) is not None:
        if collision == "skip":
            return S3PutResult(final, requested, skipped=True, bucket=target.bucket_name)
        if collision == "error":
            raise S3ObjectExistsError(f"s3://{target.bucket_name}/{final} already exists")
        number += 1
        final = _numbered(requested, number)
    try:
        response = s3_client(target).copy_object(
            Bucket=target.bucket_name,
            Key=final,
            CopySource={"Bucket": bucket.bucket_name, "Key": src_full},
        )
    except ClientError as exc:
        if _is_not_found(exc):
            raise FileNotFoundError(f"s3://{bucket.bucket_name}/{src_full} does not exist") from exc
        raise S3DeliveryError(
            f"CopyObject s3://{bucket.bucket_name}/{src_full} -> "
            f"s3://{target.bucket_name}/{final} failed: {_error_code(exc)}"
        ) from exc
    return S3PutResult(
        final,
        requested,
        renamed=final != requested,
        bucket=target.bucket_name,
        etag=(response.get("CopyObjectResult") or {}).get("ETag"),
        version_id=response.get("VersionId"),
    )


def move_object(
    bucket: S3Bucket,
    src: str,
    dst: str,
    *,
    dst_bucket: S3Bucket | None = None,
    collision: Collision = "replace",
) -> S3PutResult:
    """Copy then delete the source (S3 has no rename). If the copy was skipped because the
    target exists, the source is left in place."""
    result = copy_object(bucket, src, dst, dst_bucket=dst_bucket, collision=collision)
    if not result.skipped:
        delete_object(bucket, src)
    return result
