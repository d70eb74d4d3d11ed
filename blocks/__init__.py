"""Prefect blocks: credentials and targets, with secrets as ``SecretStr``.

``S3`` uses prefect-aws's own ``S3Bucket``/``AwsCredentials`` blocks.
"""

from .rest import RestTarget
from .rossum import RossumCredentials
from .secrets import PipelineSecrets
from .sftp import SftpServer
from .sources import IngestSource

ALL_BLOCKS = (RossumCredentials, RestTarget, SftpServer, PipelineSecrets, IngestSource)

__all__ = [
    "ALL_BLOCKS",
    "IngestSource",
    "PipelineSecrets",
    "RestTarget",
    "RossumCredentials",
    "SftpServer",
]
