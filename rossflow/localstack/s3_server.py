"""An S3-compatible endpoint (moto server) on 127.0.0.1, for tests, the demo and benchmarks.

The code under test talks to it through a normal boto3/prefect-aws client with
``endpoint_url`` set, exactly as it would talk to MinIO or another S3-compatible store.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from rossflow.localstack.uvicorn_thread import PortInUseError

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials, S3Bucket

FAKE_ACCESS_KEY_ID = "rossflow-local"
FAKE_SECRET_ACCESS_KEY = "rossflow-local-secret"  # noqa: S105 - moto accepts any credentials
DEFAULT_REGION = "us-east-1"


def _free_port(host: str, port: int) -> int:
    """Pick (port 0) or check a port before moto binds it: moto would hang on a taken port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        return int(sock.getsockname()[1])


class S3Server:
    """moto's threaded server with a free port and fixed fake credentials."""

    access_key_id = FAKE_ACCESS_KEY_ID
    secret_access_key = FAKE_SECRET_ACCESS_KEY
    region = DEFAULT_REGION

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        self.host = host
        self.port = _free_port(host, port)
        self.verbose = verbose
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        if not self.verbose:
            # werkzeug logs every request at INFO, which floods test and demo output.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"S3 server not reachable on {self.endpoint_url}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------------------
    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "region_name": self.region,
        }

    def boto3_client(self) -> Any:
        import boto3

        return boto3.client("s3", **self.client_kwargs())

    def create_bucket(self, name: str) -> str:
        client = self.boto3_client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def aws_credentials(self) -> AwsCredentials:
        """A prefect-aws credentials block pointing at this endpoint."""
        from prefect_aws import AwsCredentials
        from prefect_aws.client_parameters import AwsClientParameters
        from pydantic import SecretStr

        return AwsCredentials(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=SecretStr(self.secret_access_key),
            region_name=self.region,
            aws_client_parameters=AwsClientParameters(endpoint_url=self.endpoint_url),
        )

    def s3_bucket(self, name: str, bucket_folder: str = "", *, create: bool = True) -> S3Bucket:
        """A prefect-aws ``S3Bucket`` block for bucket ``name`` (created unless told not to)."""
        from prefect_aws import S3Bucket

        if create:
            self.create_bucket(name)
        return S3Bucket(
            bucket_name=name, credentials=self.aws_credentials(), bucket_folder=bucket_folder
        )


def run(argv: list[str] | None = None) -> int:
    """CLI: ``rossflow s3 --port 9000 --bucket rossum-inbox --bucket erp-exports``."""
    parser = argparse.ArgumentParser(prog="rossflow s3", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", action="append", default=[], help="create bucket (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    server = S3Server(args.host, args.port, verbose=args.verbose).start()
    from botocore.exceptions import ClientError

    for name in args.bucket:
        try:
            server.create_bucket(name)
        except ClientError as exc:
            server.stop()
            print(f"cannot create bucket {name!r}: {exc}", file=sys.stderr)
            return 2
    print(f"S3 endpoint {server.endpoint_url} (region {server.region})")
    print(f"AWS_ACCESS_KEY_ID={server.access_key_id}")
    print(f"AWS_SECRET_ACCESS_KEY={server.secret_access_key}")
    if args.bucket:
        print(f"buckets: {', '.join(args.bucket)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
