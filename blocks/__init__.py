"""Prefect blocks: credentials and targets, with secrets as ``SecretStr``.

``S3`` uses prefect-aws's own ``S3Bucket``/``AwsCredentials`` blocks.
"""

from .rest import RestTarget
from .rossum import RossumCredentials
from .secrets import PipelineSecrets
from .sftp import SftpServer

ALL_BLOCKS = (RossumCredentials, RestTarget, SftpServer, PipelineSecrets)

__all__ = ["ALL_BLOCKS", "PipelineSecrets", "RestTarget", "RossumCredentials", "SftpServer"]
