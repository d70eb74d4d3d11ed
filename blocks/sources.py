"""Prefect block for an ingest source: an SFTP folder or an S3 prefix, its claim/archive/failed
areas and (optionally) its default routing rules."""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from prefect_aws import S3Bucket
from pydantic import Field, model_validator

from blocks.sftp import SftpServer
from rossflow.ingest.rules import RoutingRule
from rossflow.ingest.sources import S3Source, SftpSource, Source, SourceLayout


class IngestSource(Block):
    """Where documents are dropped for Rossum: exactly one of ``sftp_server`` / ``s3_bucket``.

    The areas (``processing``, ``archive``, ``failed``) are folders/prefixes relative to
    ``directory`` unless given as absolute paths; listing never descends into them.
    """

    _block_type_name = "Rossflow Ingest Source"
    _block_type_slug = "rossflow-ingest-source"
    _description = "An SFTP folder or S3 prefix to ingest documents from, with routing rules."

    sftp_server: SftpServer | None = Field(
        default=None, description="SFTP server block (host, login, known host keys)."
    )
    s3_bucket: S3Bucket | None = Field(
        default=None, description="prefect-aws S3Bucket block (any S3-compatible endpoint)."
    )
    directory: str = Field(
        default="",
        description="SFTP folder (empty: login folder) or S3 prefix below the bucket folder.",
    )
    include: str | None = Field(
        default=None, description="Glob on the relative path, e.g. '**/*.pdf'."
    )
    include_regex: str | None = Field(default=None, description="Regex searched in the file name.")
    recursive: bool = Field(default=False, description="Also take files in sub-folders.")
    processing_dir: str = Field(default="processing", description="Claims area.")
    archive_dir: str = Field(default="archive", description="Uploaded files go here.")
    failed_dir: str = Field(default="failed", description="Rejected files + .error.json.")
    archive_layout: str = Field(
        default="%Y/%m/%d", description="Dated sub-folders below the archive; empty for none."
    )
    s3_claims: Literal["lock-object", "local"] = Field(
        default="lock-object",
        description="S3 claims: conditional lock objects (safe across hosts) or locks in the "
        "local ledger database (2 requests fewer per file; only for runs on one host).",
    )
    rules: list[RoutingRule] = Field(
        default_factory=list,
        description="Default routing rules (rossflow format or Rossum import_rules verbatim); "
        "the flow's 'rules' parameter replaces them when given.",
    )

    @model_validator(mode="after")
    def _one_backend(self) -> IngestSource:
        if (self.sftp_server is None) == (self.s3_bucket is None):
            raise ValueError("set exactly one of sftp_server or s3_bucket")
        return self

    def layout(self) -> SourceLayout:
        return SourceLayout(
            directory=self.directory,
            include=self.include,
            include_regex=self.include_regex,
            recursive=self.recursive,
            processing_dir=self.processing_dir,
            archive_dir=self.archive_dir,
            failed_dir=self.failed_dir,
            archive_layout=self.archive_layout,
        )

    def open_source(self) -> Source:
        """A ready :class:`~rossflow.ingest.sources.Source` (connections open lazily)."""
        if self.sftp_server is not None:
            return SftpSource(self.sftp_server.connection_info(), self.layout())
        assert self.s3_bucket is not None
        return S3Source(self.s3_bucket, self.layout(), claims=self.s3_claims)

    def describe(self) -> dict[str, Any]:
        kind = "sftp" if self.sftp_server is not None else "s3"
        return {"kind": kind, "directory": self.directory, "rules": len(self.rules)}
