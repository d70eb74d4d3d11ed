"""S3 delivery through prefect-aws ``S3Bucket`` blocks against a moto S3 endpoint."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pytest

from rossflow.delivery.s3 import (
    S3ObjectExistsError,
    copy_object,
    delete_object,
    head_object,
    list_objects,
    move_object,
    object_exists,
    open_object,
    put_object,
    read_object,
    resolve_key,
    s3_client,
)
from rossflow.localstack.s3_server import S3Server

if TYPE_CHECKING:
    from prefect_aws import S3Bucket


def test_block_client_uses_the_configured_endpoint(
    s3_bucket: S3Bucket, s3_server: S3Server
) -> None:
    assert s3_client(s3_bucket).meta.endpoint_url == s3_server.endpoint_url


def test_put_and_read(s3_bucket: S3Bucket) -> None:
    result = put_object(
        s3_bucket,
        "/exports/inv-1.xml",
        b"<invoice/>",
        "application/xml",
        metadata={"annotation-id": "123"},
    )
    assert result.path == "exports/inv-1.xml" and result.bucket == s3_bucket.bucket_name
    assert result.etag and result.bytes_written == 10 and not result.skipped
    assert read_object(s3_bucket, "exports/inv-1.xml") == b"<invoice/>"
    head = head_object(s3_bucket, "exports/inv-1.xml")
    assert head is not None
    assert head["ContentType"] == "application/xml"
    assert head["Metadata"] == {"annotation-id": "123"}
    body = open_object(s3_bucket, "exports/inv-1.xml")
    try:
        assert body.read() == b"<invoice/>"
    finally:
        body.close()


def test_file_like_data(s3_bucket: S3Bucket) -> None:
    put_object(s3_bucket, "a.bin", io.BytesIO(b"\x00\x01"))
    assert read_object(s3_bucket, "a.bin") == b"\x00\x01"


def test_bucket_folder_prefixes_keys(s3_server: S3Server, s3_bucket: S3Bucket) -> None:
    folder = s3_server.s3_bucket(s3_bucket.bucket_name, bucket_folder="erp/out", create=False)
    assert resolve_key(folder, "/x.csv") == "erp/out/x.csv"
    assert resolve_key(folder, "erp/out/x.csv") == "erp/out/x.csv"  # full key accepted
    result = put_object(folder, "x.csv", b"a;b", "text/csv")
    assert result.path == "erp/out/x.csv"
    assert read_object(s3_bucket, "erp/out/x.csv") == b"a;b"
    [obj] = list_objects(folder)
    assert (obj.key, obj.name, obj.size) == ("erp/out/x.csv", "x.csv", 3)
    assert read_object(folder, obj.key) == b"a;b"


def test_collision_modes(s3_bucket: S3Bucket) -> None:
    put_object(s3_bucket, "inv.xml", b"0")
    skipped = put_object(s3_bucket, "inv.xml", b"1", collision="skip")
    assert skipped.skipped and read_object(s3_bucket, "inv.xml") == b"0"
    with pytest.raises(S3ObjectExistsError, match=r"inv\.xml already exists"):
        put_object(s3_bucket, "inv.xml", b"1", collision="error")
    first = put_object(s3_bucket, "inv.xml", b"1", collision="rename")
    second = put_object(s3_bucket, "inv.xml", b"2", collision="rename")
    assert (first.path, first.renamed, second.path) == ("inv-1.xml", True, "inv-2.xml")
    replaced = put_object(s3_bucket, "inv.xml", b"3", collision="replace")
    assert not replaced.renamed and read_object(s3_bucket, "inv.xml") == b"3"
    assert [o.key for o in list_objects(s3_bucket)] == ["inv-1.xml", "inv-2.xml", "inv.xml"]


def test_listing(s3_bucket: S3Bucket) -> None:
    for key in ("in/a.pdf", "in/b.pdf", "in/sub/c.pdf", "other/d.pdf"):
        put_object(s3_bucket, key, b"x")
    # A "folder" marker object, as the S3 console creates them: never listed as a file.
    s3_client(s3_bucket).put_object(Bucket=s3_bucket.bucket_name, Key="in/", Body=b"")
    assert [o.key for o in list_objects(s3_bucket, "in/")] == [
        "in/a.pdf",
        "in/b.pdf",
        "in/sub/c.pdf",
    ]
    assert [o.key for o in list_objects(s3_bucket, "in/", recursive=False)] == [
        "in/a.pdf",
        "in/b.pdf",
    ]
    assert len(list_objects(s3_bucket)) == 4
    assert list_objects(s3_bucket, "nothing/") == []


def test_listing_paginates(s3_bucket: S3Bucket) -> None:
    client = s3_client(s3_bucket)
    for i in range(25):
        client.put_object(Bucket=s3_bucket.bucket_name, Key=f"many/{i:04d}", Body=b"")
    listed = list_objects(s3_bucket, "many/", page_size=10)
    assert [o.name for o in listed] == [f"many/{i:04d}" for i in range(25)]


def test_copy_move_delete(s3_bucket: S3Bucket) -> None:
    put_object(s3_bucket, "in/a.pdf", b"A")
    copied = copy_object(s3_bucket, "in/a.pdf", "archive/a.pdf")
    assert copied.path == "archive/a.pdf" and object_exists(s3_bucket, "in/a.pdf")
    moved = move_object(s3_bucket, "in/a.pdf", "done/a.pdf")
    assert moved.path == "done/a.pdf"
    assert not object_exists(s3_bucket, "in/a.pdf")
    assert read_object(s3_bucket, "done/a.pdf") == b"A"
    put_object(s3_bucket, "in/a.pdf", b"A2")
    renamed = move_object(s3_bucket, "in/a.pdf", "done/a.pdf", collision="rename")
    assert renamed.path == "done/a-1.pdf" and not object_exists(s3_bucket, "in/a.pdf")
    put_object(s3_bucket, "in/b.pdf", b"B")
    skipped = move_object(s3_bucket, "in/b.pdf", "done/a.pdf", collision="skip")
    assert skipped.skipped and object_exists(s3_bucket, "in/b.pdf")  # source kept
    delete_object(s3_bucket, "in/b.pdf")
    delete_object(s3_bucket, "in/b.pdf")  # idempotent
    assert not object_exists(s3_bucket, "in/b.pdf")


def test_missing_objects(s3_bucket: S3Bucket) -> None:
    assert head_object(s3_bucket, "nope") is None
    with pytest.raises(FileNotFoundError, match="nope"):
        read_object(s3_bucket, "nope")
    with pytest.raises(FileNotFoundError):
        copy_object(s3_bucket, "nope", "x")


def test_invalid_key_and_mode(s3_bucket: S3Bucket) -> None:
    with pytest.raises(ValueError):
        put_object(s3_bucket, "dir/", b"")
    with pytest.raises(ValueError):
        put_object(s3_bucket, "a", b"", collision="overwrite")  # type: ignore[arg-type]
