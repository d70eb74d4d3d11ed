"""``rossflow setup``: register the block types and create the block documents the flows use.

    rossflow setup --config rossflow.yaml      # from a file (``${VAR}`` taken from the environment)
    rossflow setup                             # from ROSSFLOW_* environment variables only
    rossflow setup --example                   # print a commented config file

Idempotent: every block is saved with ``overwrite=True``, so running it again updates the
documents in place (flows pick the new values up on their next run). Block types are registered
first, so the Prefect UI offers the forms even when nothing else is configured.

The config file maps block names to fields per section (``rossflow setup --example`` prints a
commented one); strings may use ``${VAR}`` / ``${VAR:-default}`` so secrets stay out of the file.

Environment variables (used for blocks the file does not define):

    ROSSFLOW_ROSSUM_URL, ROSSFLOW_ROSSUM_USERNAME, ROSSFLOW_ROSSUM_PASSWORD | ROSSFLOW_ROSSUM_TOKEN
                                                      → Rossum Credentials "rossum"
    ROSSFLOW_ERP_URL, ROSSFLOW_ERP_AUTH (none|basic|bearer|api_key|oauth2), ROSSFLOW_ERP_USERNAME,
    ROSSFLOW_ERP_PASSWORD, ROSSFLOW_ERP_TOKEN, ROSSFLOW_ERP_API_KEY, ROSSFLOW_ERP_TOKEN_URL,
    ROSSFLOW_ERP_CLIENT_ID, ROSSFLOW_ERP_CLIENT_SECRET        → REST Target "erp"
    ROSSFLOW_SFTP_HOST, ROSSFLOW_SFTP_PORT, ROSSFLOW_SFTP_USERNAME, ROSSFLOW_SFTP_PASSWORD,
    ROSSFLOW_SFTP_PRIVATE_KEY_FILE, ROSSFLOW_SFTP_KNOWN_HOSTS[_FILE]  → SFTP Server "sftp"
    ROSSFLOW_S3_BUCKET, ROSSFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION                                        → S3 Bucket "s3"
    ROSSFLOW_INGEST_QUEUE (queue id), ROSSFLOW_INGEST_SFTP_DIR, ROSSFLOW_INGEST_S3_PREFIX
                                                      → Ingest Sources "sftp-inbox", "s3-inbox"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from prefect.blocks.core import Block

SECTIONS = ("rossum", "rest", "sftp", "s3", "secrets", "ingest_sources")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SetupError(ValueError):
    """A config problem, worded for the person running ``rossflow setup``."""


# ----------------------------------------------------------------------------- config


def expand(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in every string of ``value``; a missing VAR is an error."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise SetupError(f"environment variable {name} is not set")

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    return value


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SetupError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)})")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise SetupError(f"{path}: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    for section, blocks in data.items():
        if blocks is None:
            data[section] = {}
        elif not isinstance(blocks, dict) or not all(isinstance(v, dict) for v in blocks.values()):
            raise SetupError(f"{path}: section {section!r} must map block names to fields")
    return expand(data, env)


def _read(path: str) -> str:
    return Path(path).expanduser().read_text(encoding="utf-8")


def config_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Blocks described by ``ROSSFLOW_*`` (and the standard ``AWS_*``) environment variables."""
    env = os.environ if env is None else env
    get = env.get
    config: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if get("ROSSFLOW_ROSSUM_URL"):
        config["rossum"]["rossum"] = _compact(
            base_url=get("ROSSFLOW_ROSSUM_URL"),
            username=get("ROSSFLOW_ROSSUM_USERNAME"),
            password=get("ROSSFLOW_ROSSUM_PASSWORD"),
            token=get("ROSSFLOW_ROSSUM_TOKEN"),
        )
    if get("ROSSFLOW_ERP_URL"):
        auth = get("ROSSFLOW_ERP_AUTH")
        if not auth:
            auth = (
                "bearer"
                if get("ROSSFLOW_ERP_TOKEN")
                else "basic"
                if get("ROSSFLOW_ERP_USERNAME")
                else "api_key"
                if get("ROSSFLOW_ERP_API_KEY")
                else "none"
            )
        config["rest"]["erp"] = _compact(
            base_url=get("ROSSFLOW_ERP_URL"),
            auth=auth,
            username=get("ROSSFLOW_ERP_USERNAME"),
            password=get("ROSSFLOW_ERP_PASSWORD"),
            token=get("ROSSFLOW_ERP_TOKEN"),
            api_key=get("ROSSFLOW_ERP_API_KEY"),
            token_url=get("ROSSFLOW_ERP_TOKEN_URL"),
            client_id=get("ROSSFLOW_ERP_CLIENT_ID"),
            client_secret=get("ROSSFLOW_ERP_CLIENT_SECRET"),
        )
    if get("ROSSFLOW_SFTP_HOST"):
        known_hosts = get("ROSSFLOW_SFTP_KNOWN_HOSTS")
        if not known_hosts and get("ROSSFLOW_SFTP_KNOWN_HOSTS_FILE"):
            known_hosts = _read(env["ROSSFLOW_SFTP_KNOWN_HOSTS_FILE"])
        key_file = get("ROSSFLOW_SFTP_PRIVATE_KEY_FILE")
        config["sftp"]["sftp"] = _compact(
            host=get("ROSSFLOW_SFTP_HOST"),
            port=int(get("ROSSFLOW_SFTP_PORT") or 22),
            username=get("ROSSFLOW_SFTP_USERNAME"),
            password=get("ROSSFLOW_SFTP_PASSWORD"),
            private_key=_read(key_file) if key_file else None,
            known_hosts=known_hosts,
        )
    if get("ROSSFLOW_S3_BUCKET"):
        config["s3"]["s3"] = _compact(
            bucket_name=get("ROSSFLOW_S3_BUCKET"),
            endpoint_url=get("ROSSFLOW_S3_ENDPOINT_URL"),
            region_name=get("AWS_DEFAULT_REGION") or get("AWS_REGION"),
            aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
        )
    queue = get("ROSSFLOW_INGEST_QUEUE")
    rules = [{"queue_id": int(queue), "pattern": "**"}] if queue else []
    if get("ROSSFLOW_INGEST_SFTP_DIR") is not None and config["sftp"]:
        config["ingest_sources"]["sftp-inbox"] = {
            "sftp_server": "sftp",
            "directory": get("ROSSFLOW_INGEST_SFTP_DIR"),
            "rules": rules,
        }
    if get("ROSSFLOW_INGEST_S3_PREFIX") is not None and config["s3"]:
        config["ingest_sources"]["s3-inbox"] = {
            "s3_bucket": "s3",
            "directory": get("ROSSFLOW_INGEST_S3_PREFIX"),
            "rules": rules,
        }
    return {k: v for k, v in config.items() if v}


def _compact(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != ""}


def merge(primary: Mapping[str, Any], fallback: Mapping[str, Any]) -> dict[str, Any]:
    """``primary``'s blocks win; ``fallback`` adds the blocks ``primary`` does not name."""
    merged: dict[str, Any] = {}
    for section in SECTIONS:
        blocks = {**(fallback.get(section) or {}), **(primary.get(section) or {})}
        if blocks:
            merged[section] = blocks
    return merged


# ----------------------------------------------------------------------------- blocks


def block_types() -> list[type[Block]]:
    from prefect_aws import AwsCredentials, S3Bucket

    from blocks import ALL_BLOCKS

    return [*ALL_BLOCKS, AwsCredentials, S3Bucket]


async def register_block_types() -> list[str]:
    """Register every block type rossflow uses (idempotent); returns their slugs."""
    slugs = []
    for cls in block_types():
        await cls.register_type_and_schema()
        slugs.append(cls.get_block_type_slug())
    return slugs


def _validation_message(section: str, name: str, exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(block)'}: {e.get('msg')}"
            for e in errors()
        ]
        return f"{section}.{name}: " + "; ".join(parts)
    return f"{section}.{name}: {exc}"


def build_blocks(config: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """``(section, name, block)`` in save order; references between blocks are resolved to the
    block objects defined in the same config (or left as names to load from Prefect)."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters
    from pydantic import ValidationError

    from blocks import IngestSource, PipelineSecrets, RestTarget, RossumCredentials, SftpServer

    plain: dict[str, type[Block]] = {
        "rossum": RossumCredentials,
        "rest": RestTarget,
        "sftp": SftpServer,
    }
    out: list[tuple[str, str, Any]] = []
    made: dict[tuple[str, str], Any] = {}
    for section, cls in plain.items():
        for name, fields in (config.get(section) or {}).items():
            section_name = (section, name)
            try:
                block = cls.model_validate(fields)
            except ValidationError as exc:
                raise SetupError(_validation_message(section, name, exc)) from None
            made[section_name] = block
            out.append((section, name, block))
    for name, fields in (config.get("s3") or {}).items():
        fields = dict(fields)
        try:
            credentials = AwsCredentials(
                aws_access_key_id=fields.pop("aws_access_key_id", None),
                aws_secret_access_key=fields.pop("aws_secret_access_key", None),
                region_name=fields.pop("region_name", None),
                aws_client_parameters=AwsClientParameters(
                    endpoint_url=fields.pop("endpoint_url", None)
                ),
            )
            bucket = S3Bucket(credentials=credentials, **fields)
        except (ValidationError, TypeError) as exc:
            raise SetupError(_validation_message("s3", name, exc)) from None
        out.append(("s3", f"{name}-credentials", credentials))
        out.append(("s3", name, bucket))
        made[("s3", name)] = bucket
    for name, fields in (config.get("secrets") or {}).items():
        try:
            block = PipelineSecrets.model_validate(fields)
        except ValidationError as exc:
            raise SetupError(_validation_message("secrets", name, exc)) from None
        out.append(("secrets", name, block))
    for name, fields in (config.get("ingest_sources") or {}).items():
        fields = dict(fields)
        for key, section, cls in (
            ("sftp_server", "sftp", SftpServer),
            ("s3_bucket", "s3", S3Bucket),
        ):
            ref = fields.get(key)
            if isinstance(ref, str):
                fields[key] = made.get((section, ref)) or _Ref(cls, ref)
        refs = {k: v for k, v in fields.items() if isinstance(v, _Ref)}
        if refs:  # validated once the referenced blocks are loaded
            out.append(("ingest_sources", name, _Pending(IngestSource, fields, refs)))
            continue
        try:
            block = IngestSource.model_validate(fields)
        except ValidationError as exc:
            raise SetupError(_validation_message("ingest_sources", name, exc)) from None
        out.append(("ingest_sources", name, block))
    return out


class _Ref:
    """A block named in the config but defined only in Prefect (loaded at save time)."""

    def __init__(self, cls: Any, name: str) -> None:
        self.cls, self.name = cls, name


class _Pending:
    def __init__(self, cls: Any, fields: dict[str, Any], refs: dict[str, _Ref]) -> None:
        self.cls, self.fields, self.refs = cls, fields, refs

    async def resolve(self, section: str, name: str) -> Any:
        from pydantic import ValidationError

        fields = dict(self.fields)
        for key, ref in self.refs.items():
            try:
                fields[key] = await ref.cls.aload(ref.name)
            except ValueError as exc:
                raise SetupError(
                    f"{section}.{name}: {key} {ref.name!r} is neither in the config nor saved "
                    f"in Prefect ({exc})"
                ) from None
        try:
            return self.cls.model_validate(fields)
        except ValidationError as exc:
            raise SetupError(_validation_message(section, name, exc)) from None


async def apply(config: Mapping[str, Any], *, register: bool = True) -> list[str]:
    """Register the block types and save every block of ``config``; returns ``slug/name`` lines."""
    planned = build_blocks(config)  # validate everything before saving anything
    if register:
        await register_block_types()
    saved = []
    for section, name, block in planned:
        if isinstance(block, _Pending):
            block = await block.resolve(section, name)
        await block.asave(name, overwrite=True)
        saved.append(f"{block.get_block_type_slug()}/{name}")
    return saved


EXAMPLE_CONFIG = """\
# rossflow setup --config rossflow.yaml
# Every section is optional; the keys under a section are block names.
# ${VAR} and ${VAR:-default} are taken from the environment (keep secrets out of this file).

rossum:                       # Rossum Credentials
  rossum:
    base_url: https://acme.rossum.app/api
    username: integration@acme.com
    password: ${ROSSUM_PASSWORD}
    rate_limit_per_s: 10
    # shared_rate_limit: true   # one budget for all workers (or ROSSFLOW_RATE_LIMIT=shared)

rest:                         # Rossflow REST Target (the ERP)
  erp:
    base_url: https://erp.acme.com
    auth: bearer
    token: ${ERP_TOKEN}

sftp:                         # Rossflow SFTP Server (ingest source and/or export target)
  partner-sftp:
    host: sftp.acme.com
    port: 22
    username: rossum
    password: ${SFTP_PASSWORD}
    known_hosts: "sftp.acme.com ssh-ed25519 AAAA..."

s3:                           # prefect-aws S3 Bucket, plus "<name>-credentials"
  inbox:
    bucket_name: rossum-inbox
    region_name: eu-west-1
    aws_access_key_id: ${AWS_ACCESS_KEY_ID}
    aws_secret_access_key: ${AWS_SECRET_ACCESS_KEY}
    # endpoint_url: http://minio:9000   # any S3-compatible endpoint

secrets:                      # Rossflow Pipeline Secrets ({secret.x} in pipelines)
  pipeline-secrets:
    values:
      erp_api_key: ${ERP_API_KEY:-}

ingest_sources:               # Rossflow Ingest Source; sftp_server / s3_bucket name a block
  sftp-inbox:
    sftp_server: partner-sftp
    directory: inbox
    rules: [{queue_id: 1, pattern: "*.pdf"}]
  s3-inbox:
    s3_bucket: inbox
    directory: inbox
    rules: [{queue_id: 1, pattern: "**"}]
"""


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rossflow setup",
        description="Register rossflow's Prefect block types and create/update block documents "
        "from a YAML config file and/or ROSSFLOW_* environment variables (idempotent).",
    )
    parser.add_argument("--config", type=Path, help="YAML file (see --example)")
    parser.add_argument(
        "--no-env", action="store_true", help="ignore ROSSFLOW_* environment variables"
    )
    parser.add_argument("--check", action="store_true", help="validate the config, save nothing")
    parser.add_argument("--example", action="store_true", help="print an example config")
    args = parser.parse_args(argv)
    if args.example:
        print(EXAMPLE_CONFIG, end="")
        return 0
    try:
        config: dict[str, Any] = load_config(args.config) if args.config else {}
        if not args.no_env:
            config = merge(config, config_from_env())
        if args.check:
            planned = build_blocks(config)
            for section, name, _ in planned:
                print(f"ok  {section}.{name}")
            return 0
        saved = asyncio.run(apply(config))
    except SetupError as exc:
        print(f"rossflow setup: {exc}", file=sys.stderr)
        return 2
    from prefect.settings import PREFECT_API_URL

    where = PREFECT_API_URL.value() or "the ephemeral Prefect API"
    print(f"rossflow setup: block types registered at {where}")
    for line in saved:
        print(f"  saved {line}")
    if not saved:
        print("  no blocks configured (pass --config, or set ROSSFLOW_* variables; see --help)")
    return 0
