"""File-storage steps (SFTP, S3): planning, uploading through the ledger, session pools.

Blocking transports (paramiko, boto3) run in a bounded thread pool; each SFTP session is used
by one worker thread at a time. A retry of our own interrupted upload overwrites our own
(identical) file; a new upload honours the step's collision rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from rossflow.delivery.sftp import SftpConnectionInfo, SftpSession
from rossflow.ledger import EffectBusy, Ledger
from rossflow.redaction import Redactor

from .batch import DocState
from .config import FileStorageStep, PipelineConfig, S3Step
from .errors import StepError
from .steps import plan_file_storage
from .targets import Targets

log = logging.getLogger("rossflow.export")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _SessionPool:
    """A few SFTP sessions, each used by one worker thread at a time."""

    def __init__(self, info: SftpConnectionInfo, size: int) -> None:
        self.info = info
        self.size = size
        self._idle: queue.LifoQueue[SftpSession] = queue.LifoQueue()
        self._all: list[SftpSession] = []
        self._lock = threading.Lock()

    def acquire(self) -> SftpSession:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            session = SftpSession(self.info)
            session.connect()
            with self._lock:
                self._all.append(session)
            return session

    def release(self, session: SftpSession) -> None:
        self._idle.put(session)

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                try:
                    session.close()
                except Exception:
                    log.debug("closing an SFTP session failed", exc_info=True)
            self._all.clear()


class FileStorer:
    """Runs file-storage steps for one export run (one thread pool, SFTP sessions pooled)."""

    def __init__(
        self,
        pipeline: PipelineConfig,
        *,
        targets: Targets,
        ledger: Ledger,
        redactor: Redactor,
        file_concurrency: int,
        dry_run: bool,
    ) -> None:
        self.pipeline = pipeline
        self.targets = targets
        self.ledger = ledger
        self.redactor = redactor
        self.file_concurrency = file_concurrency
        self.dry_run = dry_run
        self._executor = ThreadPoolExecutor(
            max_workers=file_concurrency, thread_name_prefix="rossflow-files"
        )
        self._sftp_pools: dict[str, _SessionPool] = {}

    async def aclose(self) -> None:
        for pool in self._sftp_pools.values():
            await asyncio.get_running_loop().run_in_executor(self._executor, pool.close)
        self._executor.shutdown(wait=True)

    def _file_target(
        self, step: FileStorageStep, step_secrets: Mapping[str, Any]
    ) -> tuple[str, Any]:
        secrets = {
            k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
            for k, v in step_secrets.items()
        }
        creds = dict(step.credentials or {})
        if isinstance(step, S3Step) or creds.get("type") == "s3":
            if step.target:
                target = self.targets.get("s3", step.target)
            else:
                target = _inline_s3(step, creds, secrets)
            self.redactor.add_from(target)
            return "s3", target
        if step.target:
            found = self.targets.get("sftp", step.target)
            info = found.connection_info() if hasattr(found, "connection_info") else found
        else:
            info = _inline_sftp(step, creds, secrets)
        self.redactor.add_from(info)
        return "sftp", info

    async def run(self, step: FileStorageStep, doc: DocState, secrets: Mapping[str, Any]) -> bool:
        """Upload the step's planned files for one document, each once (ledger-keyed)."""
        kind, target = self._file_target(step, secrets)
        plan_key = f"plan:{doc.annotation_id}:{step.name}"
        if not self.dry_run:
            self.ledger.begin(plan_key, kind="plan", subject=str(doc.annotation_id), step=step.name)
        first = self.ledger.get(plan_key)
        now = datetime.fromtimestamp(first.created_at, UTC) if first else datetime.now(UTC)

        def counter(name: str) -> int:
            return self.ledger.sequence(
                f"{self.pipeline.name}:{step.name}:{name}", f"{doc.annotation_id}:{step.name}"
            )

        planned = plan_file_storage(step, doc.ctx, counter=counter, now=now)
        label = (
            f"s3://{getattr(target, 'bucket_name', '?')}"
            if kind == "s3"
            else f"sftp://{target.display}"
        )
        # Messages name the block (when the step names one) and the location.
        shown = f"{step.target} ({label})" if step.target else label
        doc.last_target = shown
        for item in planned:
            data = item.read()
            key = _sha(f"{doc.annotation_id}\n{step.name}\n{item.path}\n{_sha(data)}".encode())
            if doc.generation:
                key = _sha(f"{key}\nattempt {doc.generation}".encode())
            if self.dry_run:
                doc.deliveries.append(
                    {"step": step.name, "target": label + item.path, "state": "dry_run"}
                )
                continue
            try:
                done = self.ledger.claim(
                    key,
                    kind="delivery",
                    subject=str(doc.annotation_id),
                    step=step.name,
                    target=label + item.path,
                )
            except EffectBusy as exc:
                return doc.leave_to_holder(exc)
            if done is not None:
                doc.deliveries.append(
                    {
                        "step": step.name,
                        "target": done.result.get("path", item.path),
                        "state": "already_delivered",
                    }
                )
                continue
            # A retry of our own interrupted attempt overwrites our own (identical) file.
            attempts = self.ledger.get(key).attempts if self.ledger.get(key) else 1  # type: ignore[union-attr]
            collision = "replace" if attempts > 1 else item.collision
            try:
                final = await self._put(kind, target, item.path, data, item.content_type, collision)
            except Exception as exc:
                self.ledger.finish(key, ok=False, result={"error": self.redactor(str(exc))})
                raise StepError(
                    f"upload of {item.path} failed: {exc}",
                    step=step.name,
                    target=shown,
                    secrets=self.redactor,
                ) from exc
            self.ledger.finish(key, ok=True, result={"path": final})
            doc.deliveries.append(
                {"step": step.name, "target": label + final, "state": "delivered"}
            )
        return True

    async def _put(
        self, kind: str, target: Any, path: str, data: bytes, content_type: str, collision: str
    ) -> str:
        loop = asyncio.get_running_loop()
        if kind == "s3":
            from rossflow.delivery import s3 as s3_delivery

            result = await loop.run_in_executor(
                self._executor,
                lambda: s3_delivery.put_object(
                    target,
                    path.lstrip("/"),
                    data,
                    content_type,
                    collision,  # type: ignore[arg-type]
                ),
            )
            return str(result.path)
        info: SftpConnectionInfo = target
        pool = self._sftp_pools.get(info.display)
        if pool is None:
            pool = self._sftp_pools[info.display] = _SessionPool(info, self.file_concurrency)

        def put() -> str:
            session = pool.acquire()
            try:
                return session.put_atomic(path, data, collision).path  # type: ignore[arg-type]
            finally:
                pool.release(session)

        return await loop.run_in_executor(self._executor, put)


def _inline_sftp(step: FileStorageStep, creds: dict[str, Any], secrets: dict[str, Any]) -> Any:
    """Rossum file-storage ``credentials`` + hook secrets → connection info."""
    if not creds.get("host"):
        raise StepError("SFTP step has neither target nor credentials.host", step=step.name)
    key = secrets.get("ssh_key")
    return SftpConnectionInfo(
        host=str(creds["host"]),
        port=int(creds.get("port") or 22),
        username=str(creds.get("username") or ""),
        password=SecretStr(secrets["password"]) if secrets.get("password") else None,
        private_key=SecretStr(str(key).replace("\\n", "\n")) if key else None,
        passphrase=SecretStr(secrets["ssh_key_passphrase"])
        if secrets.get("ssh_key_passphrase")
        else None,
        known_hosts=str(creds.get("known_hosts") or ""),
        verify_host_key=bool(creds.get("verify_host_key", True)),
    )


def _inline_s3(step: FileStorageStep, creds: dict[str, Any], secrets: dict[str, Any]) -> Any:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    if not creds.get("bucket_name"):
        raise StepError("S3 step has neither target nor credentials.bucket_name", step=step.name)
    params = (
        AwsClientParameters(endpoint_url=creds["endpoint_url"])
        if creds.get("endpoint_url")
        else None
    )
    aws = AwsCredentials(
        aws_access_key_id=secrets.get("access_key_id"),
        aws_secret_access_key=secrets.get("secret_access_key"),
        region_name=creds.get("region") or "us-east-1",
        aws_client_parameters=params or AwsClientParameters(),
    )
    return S3Bucket(bucket_name=str(creds["bucket_name"]), credentials=aws)
