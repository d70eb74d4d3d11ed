"""Where files come from: SFTP folders and S3 prefixes, with claims that survive crashes.

Layout below the source directory (every area can be set to another folder/prefix)::

    <directory>/                    files to ingest (optionally in sub-folders)
    <directory>/processing/         claims (see below)
    <directory>/archive/YYYY/MM/DD/ uploaded files (folders below the directory are kept)
    <directory>/failed/             rejected files, each with <name>.error.json

Claims, so that two runs never take the same file:

* **SFTP**: a claim is an atomic ``rename`` of the file into ``processing/<run-id>/``; a second
  run renaming the same file gets "no such file" and skips it. ``processing/<run-id>/.owner.json``
  says which run (host, pid, heartbeat) holds the folder; when that run is dead or finished, the
  next run adopts the whole folder with one more atomic rename and finishes its files.
* **S3** has no rename, so the file stays where it is and a claim is a lock object
  ``processing/_locks/<hash>.json`` written with ``If-None-Match: *`` (only one writer can create
  it); a stale lock is taken over with ``If-Match: <its ETag>``, so only one run wins that too.
  Stores without conditional writes fall back to a lock in the local state database (one host).

One SFTP session per worker thread (paramiko channels are not thread-safe); one boto3 client
(thread-safe) for S3.
"""

from rossflow.ingest.sources.base import (
    OWNER_FILE,
    SIDECAR_SUFFIX,
    Source,
    SourceLayout,
    SpooledContent,
    StaleCheck,
)
from rossflow.ingest.sources.s3 import S3Source
from rossflow.ingest.sources.sftp import SftpSource

__all__ = [
    "OWNER_FILE",
    "SIDECAR_SUFFIX",
    "S3Source",
    "SftpSource",
    "Source",
    "SourceLayout",
    "SpooledContent",
    "StaleCheck",
]
