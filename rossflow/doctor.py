"""``rossflow doctor``: check a real installation without side effects.

One line per check, and a fix for every failure: the Prefect API, the deployments and the blocks
they name, the Rossum login, each export queue's settings against rossflow's export mode, the
webhook URL, the ERP, the SFTP host keys and the S3 buckets. Only reads: logins, GETs, an SFTP
handshake, ``HeadBucket``. Exit code 1 when a check fails.

The checks are plain functions over loaded blocks and Rossum's JSON (testable without Prefect);
:func:`gather` reads what to check from the Prefect API and :func:`run` is the thin CLI.

Just over 600 lines but one concept: the installation check. Each check is a short function
with its fix text; kept together so the list of checks reads in the order it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
EXPORT_FLOW = "rossum-export"
INGEST_FLOW = "rossflow-ingest"
EXPORT_EVENT = "annotation_content.export"


@dataclass
class Check:
    """One checked thing: ``status`` is ok / warn / FAIL / skip; ``fix`` says what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        if self.fix and self.status in (FAIL, WARN):
            text += f"\n      fix: {self.fix}"
        return text


@dataclass
class Plan:
    """What to check: the blocks and queues named by the deployments (or given on the CLI)."""

    rossum_blocks: set[str] = field(default_factory=set)
    queues: dict[int, list[str]] = field(default_factory=dict)  # queue id -> deployments
    pipelines: dict[str, str] = field(default_factory=dict)  # pipeline file -> deployment
    sources: dict[str, str] = field(default_factory=dict)  # ingest source block -> deployment
    webhook_urls: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- pure checks


def queue_export_check(
    queue: dict[str, Any], hooks: Iterable[dict[str, Any]], rossum_url: str
) -> Check:
    """Does this queue hand its confirmed documents to rossflow's export?

    rossflow exports by reading the queue's ``confirmed`` annotations, which exist only with
    ``use_confirmed_state: true``. Without it Rossum moves a confirmed document straight on to
    ``exporting``/``exported`` itself: through its own ``annotation_content.export`` hooks, or,
    with none, to ``exported`` with nothing delivered anywhere."""
    qid, qname = queue.get("id"), queue.get("name") or ""
    name = f"queue {qid} ({qname})" if qname else f"queue {qid}"
    export_hooks = [
        h
        for h in hooks
        if h.get("active", True)
        and EXPORT_EVENT in (h.get("events") or [])
        and _serves_queue(h, int(qid or 0))
    ]
    hook_names = ", ".join(f"'{h.get('name') or h.get('id')}'" for h in export_hooks)
    patch = (
        f"PATCH {rossum_url.rstrip('/')}/v1/queues/{qid} with "
        '{"use_confirmed_state": true} (Rossum UI: queue settings → Use confirmed state)'
    )
    if queue.get("use_confirmed_state"):
        if export_hooks:
            return Check(
                name,
                WARN,
                "use_confirmed_state is on (rossflow exports confirmed annotations), and "
                f"export hook(s) {hook_names} also run when annotations move to exported",
                "make sure the hooks and rossflow do not deliver the same documents twice, "
                "or deactivate the hooks",
            )
        return Check(
            name, OK, "use_confirmed_state is on: confirmed annotations wait for rossflow's export"
        )
    if export_hooks:
        return Check(
            name,
            FAIL,
            f"use_confirmed_state is off and export hook(s) {hook_names} "
            f"({EXPORT_EVENT}) export inside Rossum: annotations never stay 'confirmed', so "
            "rossflow's export never sees them",
            f"to export with rossflow: {patch}, and deactivate those hooks; otherwise remove "
            "this queue from the rossflow export deployment",
        )
    return Check(
        name,
        FAIL,
        "use_confirmed_state is off and the queue has no "
        f"{EXPORT_EVENT} hook: Rossum moves every confirmed document straight to 'exported' "
        "without delivering it, and rossflow's export (which reads confirmed annotations) never "
        "sees it. Nothing will ever be exported from this queue",
        patch,
    )


def _has_event(hook: dict[str, Any], event: str) -> bool:
    """``annotation_status`` matches ``annotation_status.changed``; a bare event name on the
    hook means all of its actions (``annotation_content`` includes ``.export``)."""
    base = event.split(".", 1)[0]
    for name in hook.get("events") or []:
        if name in (event, base) or ("." not in event and str(name).startswith(event + ".")):
            return True
    return False


def _serves_queue(hook: dict[str, Any], queue_id: int) -> bool:
    for url in hook.get("queues") or []:
        if str(url).rstrip("/").rsplit("/", 1)[-1] == str(queue_id):
            return True
    return False


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if text != exc.__class__.__name__ else text


# --------------------------------------------------------------------------------- live checks


async def check_prefect(api_url: str | None) -> Check:
    from prefect.client.orchestration import get_client

    if not api_url:
        return Check(
            "Prefect API",
            FAIL,
            "PREFECT_API_URL is not set (neither in the environment nor in the Prefect profile)",
            "set it to the server the workers use: `prefect config set "
            "PREFECT_API_URL=http://<host>:4200/api` or export PREFECT_API_URL",
        )
    where = api_url
    try:
        async with get_client() as client:
            error = await client.api_healthcheck()
    except Exception as exc:
        error = exc
    if error is None:
        return Check("Prefect API", OK, f"{where} answers")
    return Check(
        "Prefect API",
        FAIL,
        f"{where} does not answer ({_short(error)})",
        "start it (`prefect server start`, or the compose stack) or set PREFECT_API_URL to "
        "the server the workers use (`prefect config set PREFECT_API_URL=…`)",
    )


async def check_rossum(
    block_name: str,
    credentials: Any,
    queues: dict[int, list[str]],
    hooks_seen: list[dict[str, Any]] | None = None,
) -> list[Check]:
    """Login, then each queue: exists, and its settings match rossflow's export mode. The hooks
    read on the way are appended to ``hooks_seen`` (for the webhook check)."""
    from rossflow.rossum import AuthenticationError, NotFoundError, RossumAPIError, RossumError

    url = credentials.base_url
    checks: list[Check] = []
    client = credentials.get_client()
    try:
        async with client:
            try:
                if credentials.username and credentials.password:
                    await client.login()
                    how = f"as {credentials.username}"
                else:
                    await client.list_queues(page_size=1)
                    how = "with the API token"
            except (AuthenticationError, RossumAPIError) as exc:
                status = getattr(exc, "status", None)
                return [
                    Check(
                        f"Rossum login ({block_name})",
                        FAIL,
                        f"{url} refused the login"
                        + (f" as {credentials.username}" if credentials.username else "")
                        + f" (HTTP {status}: {getattr(exc, 'detail', '') or exc})",
                        f"fix the username/password or token in the Rossum Credentials block "
                        f"'{block_name}' (`rossflow setup`, or the Prefect UI → Blocks)",
                    )
                ]
            except RossumError as exc:
                return [
                    Check(
                        f"Rossum login ({block_name})",
                        FAIL,
                        f"{url} is not reachable ({_short(exc)})",
                        f"check base_url in the Rossum Credentials block '{block_name}' "
                        "(e.g. https://<org>.rossum.app/api) and the network/proxy",
                    )
                ]
            checks.append(Check(f"Rossum login ({block_name})", OK, f"{url} {how}"))
            if not queues:
                return checks
            try:
                hooks = await client.list_hooks()
                if hooks_seen is not None:
                    hooks_seen.extend(hooks)
            except RossumError as exc:
                hooks = []
                checks.append(
                    Check(
                        "Rossum hooks",
                        WARN,
                        f"cannot list hooks ({_short(exc)}); export hooks not checked",
                        "give the user permission to read hooks (admin role)",
                    )
                )
            for qid, used_by in sorted(queues.items()):
                try:
                    queue = await client.get_queue(qid)
                except NotFoundError:
                    checks.append(
                        Check(
                            f"queue {qid}",
                            FAIL,
                            f"does not exist in {url} or this user cannot see it "
                            f"(used by {', '.join(used_by)})",
                            "fix the queue ids of the deployment (`queues` parameter) or give "
                            "the user access to the queue",
                        )
                    )
                    continue
                except RossumError as exc:
                    checks.append(Check(f"queue {qid}", FAIL, f"cannot read it: {_short(exc)}"))
                    continue
                checks.append(queue_export_check(queue, hooks, url))
            return checks
    except RossumError as exc:  # pragma: no cover - closing the client
        checks.append(Check(f"Rossum ({block_name})", FAIL, _short(exc)))
        return checks


def webhook_hooks(hooks: Iterable[dict[str, Any]], queues: Iterable[int]) -> list[str]:
    """URLs of active webhook hooks on the queues that send annotation_status events."""
    urls = []
    wanted = set(queues)
    for hook in hooks:
        if not hook.get("active", True) or hook.get("type", "webhook") != "webhook":
            continue
        if not _has_event(hook, "annotation_status"):
            continue
        if wanted and not any(_serves_queue(hook, q) for q in wanted):
            continue
        url = (hook.get("config") or {}).get("url")
        if url:
            urls.append(str(url))
    return list(dict.fromkeys(urls))


async def check_webhook(url: str, rossum_url: str, timeout: float) -> Check:
    """The receiver answers ``GET /health``; Rossum outside this machine cannot call localhost."""
    parts = urlsplit(url)
    health = f"{parts.scheme}://{parts.netloc}/health"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.get(health)
    except httpx.HTTPError as exc:
        return Check(
            "webhook",
            FAIL,
            f"{url} is not reachable from here ({_short(exc)})",
            "start `rossflow webhook` (or the compose service) and make the hook URL point to "
            "it; Rossum must be able to reach it (public HTTPS URL)",
        )
    if resp.status_code != 200:
        return Check(
            "webhook",
            FAIL,
            f"{health} answered HTTP {resp.status_code}: not a rossflow webhook receiver",
            "point the Rossum hook at `rossflow webhook`'s /rossum URL",
        )
    if _is_local(url) and not _is_local(rossum_url):
        return Check(
            "webhook",
            FAIL,
            f"{url} answers here, but Rossum ({rossum_url}) cannot call a local address",
            "expose the receiver on a public HTTPS URL (reverse proxy) and use that in the hook",
        )
    return Check("webhook", OK, f"{url} answers (receiver health 200)")


async def check_rest(name: str, block: Any, timeout: float) -> Check:
    """The ERP base URL answers at all (any HTTP status: this is about reaching it)."""
    base = block.base_url
    verify: Any = block.ca_bundle or block.verify
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=verify) as client:
            resp = await client.get(base)
    except httpx.HTTPError as exc:
        return Check(
            f"ERP ({name})",
            FAIL,
            f"{base} does not answer ({_short(exc)})",
            f"check base_url in the REST Target block '{name}', that the ERP is up, and the "
            "network/firewall/proxy between here and it",
        )
    return Check(f"ERP ({name})", OK, f"{base} answers (HTTP {resp.status_code} to GET)")


def check_sftp(name: str, block: Any) -> Check:
    """An SFTP handshake + login: the host key must be in the block's known_hosts."""
    from rossflow.delivery.sftp import SftpAuthError, SftpError, SftpHostKeyError, SftpSession

    info = block.connection_info()
    where = f"sftp://{info.username}@{info.host}:{info.port}"
    if not info.verify_host_key:
        verdict = Check(
            f"SFTP ({name})",
            WARN,
            f"{where}: host key verification is off",
            f"add the server's known_hosts line to the block '{name}' and turn verify_host_key on",
        )
    else:
        verdict = Check(f"SFTP ({name})", OK, f"{where}: host key known, login works")
    session = SftpSession(info)
    try:
        session.connect()
    except SftpHostKeyError as exc:
        return Check(
            f"SFTP ({name})",
            FAIL,
            f"{where}: {exc}",
            f"get the key with `ssh-keyscan -p {info.port} {info.host}`, check its fingerprint "
            f"with the server's admin, and put the line into known_hosts of the block '{name}'",
        )
    except SftpAuthError as exc:
        return Check(
            f"SFTP ({name})",
            FAIL,
            f"{where}: host key known, login refused ({exc})",
            f"fix the password or private key in the block '{name}'",
        )
    except SftpError as exc:
        return Check(
            f"SFTP ({name})",
            FAIL,
            f"{where}: {exc}",
            f"check host/port in the block '{name}' and the network",
        )
    finally:
        session.close()
    return verdict


def check_s3(name: str, bucket: Any) -> Check:
    """``HeadBucket`` with the block's credentials."""
    try:
        client = bucket.credentials.get_s3_client()
        client.head_bucket(Bucket=bucket.bucket_name)
    except Exception as exc:
        return Check(
            f"S3 ({name})",
            FAIL,
            f"bucket {bucket.bucket_name} is not reachable ({_short(exc)})",
            f"check the bucket name, the AWS credentials and endpoint of the block '{name}', "
            "and that they may s3:ListBucket",
        )
    return Check(f"S3 ({name})", OK, f"bucket {bucket.bucket_name} reachable")


# ------------------------------------------------------------------------------- orchestration


async def _load(cls: Any, name: str, kind: str, used_by: str) -> tuple[Any, Check]:
    try:
        block = await cls.aload(name)
    except Exception as exc:
        missing = "not found" in str(exc).lower() or "ObjectNotFound" in type(exc).__name__
        return None, Check(
            f"block {name}",
            FAIL,
            f"{kind} '{name}' (used by {used_by}) "
            + ("does not exist" if missing else f"does not load ({_short(exc)})"),
            "create it with `rossflow setup` (config file or ROSSFLOW_* variables) or in the "
            "Prefect UI → Blocks",
        )
    return block, Check(f"block {name}", OK, f"{kind} loads")


async def gather(deployment: str | None) -> tuple[Plan, list[Check]]:
    """Read the deployments (one, or every rossflow one) and collect what they use."""
    from prefect.client.orchestration import get_client

    plan, checks = Plan(), []
    async with get_client() as client:
        if deployment:
            try:
                deployments = [await client.read_deployment_by_name(deployment)]
            except Exception as exc:
                checks.append(
                    Check(
                        f"deployment {deployment}",
                        FAIL,
                        f"not found ({_short(exc)})",
                        "name it as FLOW/DEPLOYMENT (`prefect deployment ls`); create it with "
                        "`rossflow serve` or `prefect deploy`",
                    )
                )
                return plan, checks
        else:
            deployments = await client.read_deployments()
        flows = {d.flow_id: (await client.read_flow(d.flow_id)).name for d in deployments}
    for dep in deployments:
        flow_name = flows[dep.flow_id]
        full = f"{flow_name}/{dep.name}"
        params = dict(dep.parameters or {})
        if flow_name == EXPORT_FLOW:
            plan.rossum_blocks.add(str(params.get("rossum") or "rossum"))
            for q in params.get("queues") or []:
                plan.queues.setdefault(int(q), []).append(full)
            if params.get("pipeline"):
                plan.pipelines[str(params["pipeline"])] = full
        elif flow_name == INGEST_FLOW:
            plan.rossum_blocks.add(str(params.get("rossum") or "rossum"))
            sources = [params.get("source")]
            sources += [(s.parameters or {}).get("source") for s in dep.schedules or []]
            for source in sources:
                if source:
                    plan.sources[str(source)] = full
        else:
            continue
        checks.append(Check(f"deployment {full}", OK, "found"))
    if not checks:
        checks.append(
            Check(
                "deployments",
                WARN if not deployment else FAIL,
                "no rossflow deployment found: checking the default blocks only",
                "create them with `rossflow serve` or `prefect deploy --prefect-file "
                "deployments/prefect.yaml`",
            )
        )
        plan.rossum_blocks.add("rossum")
    return plan, checks


async def diagnose(
    deployment: str | None = None,
    *,
    queues: Sequence[int] = (),
    webhook_urls: Sequence[str] = (),
    timeout: float = 10.0,
) -> list[Check]:
    from prefect.settings import PREFECT_API_URL
    from prefect_aws import S3Bucket

    from blocks import RestTarget, RossumCredentials, SftpServer
    from blocks.sources import IngestSource
    from rossflow.export.config import FileStorageStep, RestStep, S3Step

    checks = [await check_prefect(PREFECT_API_URL.value())]
    if checks[0].status == FAIL:
        checks.append(Check("everything else", SKIP, "needs the Prefect API (blocks live there)"))
        return checks
    plan, found = await gather(deployment)
    checks += found
    if deployment and any(c.status == FAIL for c in found):
        return checks
    for q in queues:
        plan.queues.setdefault(int(q), []).append("--queue")

    rossum_url = ""
    for name in sorted(plan.rossum_blocks):
        creds, check = await _load(RossumCredentials, name, "Rossum Credentials", "the flows")
        checks.append(check)
        if creds is None:
            continue
        rossum_url = creds.base_url
        hooks: list[dict[str, Any]] = []
        checks += await check_rossum(name, creds, plan.queues, hooks)
        if plan.queues and not webhook_urls:
            plan.webhook_urls += webhook_hooks(hooks, plan.queues)
    for url in [*webhook_urls, *plan.webhook_urls] or []:
        checks.append(await check_webhook(url, rossum_url, timeout))
    if plan.queues and not (webhook_urls or plan.webhook_urls):
        checks.append(
            Check(
                "webhook",
                WARN,
                "no active annotation_status webhook hook on the export queues: exports run "
                "only on the schedule",
                "point a Rossum webhook hook (events annotation_status) at `rossflow webhook`'s "
                "/rossum URL for exports within seconds of confirmation",
            )
        )

    from flows.export import load_pipeline_source

    rest: dict[str, str] = {}
    sftp: dict[str, str] = {}
    s3: dict[str, str] = {}
    for pipeline, used_by in plan.pipelines.items():
        try:
            config = load_pipeline_source(pipeline)
        except Exception as exc:
            checks.append(
                Check(
                    f"pipeline {pipeline}",
                    FAIL,
                    f"does not load ({_short(exc)})",
                    f"fix the file, or the `pipeline` parameter of {used_by}; "
                    "`rossflow render` previews it",
                )
            )
            continue
        checks.append(Check(f"pipeline {pipeline}", OK, f"{len(config.steps)} step(s)"))
        for step in config.steps:
            target = getattr(step, "target", None)
            if not target:
                continue
            if isinstance(step, RestStep):
                rest.setdefault(target, used_by)
            elif isinstance(step, S3Step):
                s3.setdefault(target, used_by)
            elif isinstance(step, FileStorageStep):
                sftp.setdefault(target, used_by)
    if not plan.pipelines and not deployment:
        rest.setdefault("erp", "the default set-up")  # only if it exists: see below
    sftp_blocks: list[tuple[str, Any]] = []
    s3_blocks: list[tuple[str, Any]] = []
    for name, used_by in plan.sources.items():
        source, check = await _load(IngestSource, name, "Ingest Source", used_by)
        checks.append(check)
        if source is None:
            continue
        if source.sftp_server is not None:
            sftp_blocks.append((name, source.sftp_server))
        if source.s3_bucket is not None:
            s3_blocks.append((name, source.s3_bucket))
    for name, used_by in rest.items():
        block, check = await _load(RestTarget, name, "REST Target", used_by)
        if block is None and used_by == "the default set-up":
            continue
        checks.append(check)
        if block is not None:
            checks.append(await check_rest(name, block, timeout))
    for name, used_by in sftp.items():
        block, check = await _load(SftpServer, name, "SFTP Server", used_by)
        checks.append(check)
        if block is not None:
            sftp_blocks.append((name, block))
    for name, used_by in s3.items():
        block, check = await _load(S3Bucket, name, "S3 Bucket", used_by)
        checks.append(check)
        if block is not None:
            s3_blocks.append((name, block))
    for name, block in sftp_blocks:
        checks.append(await asyncio.to_thread(check_sftp, name, block))
    for name, block in s3_blocks:
        checks.append(await asyncio.to_thread(check_s3, name, block))
    return checks


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rossflow doctor",
        description="Check an installation without side effects: one line per check, a fix "
        "for each failure; exit code 1 if any check fails.",
    )
    parser.add_argument(
        "--deployment",
        help="FLOW/DEPLOYMENT to check, e.g. rossum-export/queues-1 (default: every rossflow "
        "deployment on the Prefect server)",
    )
    parser.add_argument(
        "--queue", type=int, action="append", default=[], help="also check this Rossum queue"
    )
    parser.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        help="check this receiver URL instead of the URLs of the queues' webhook hooks",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per network check")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    checks = asyncio.run(
        diagnose(
            args.deployment,
            queues=args.queue,
            webhook_urls=args.webhook_url,
            timeout=args.timeout,
        )
    )
    for check in checks:
        print(check.line())
    counts = {status: sum(c.status == status for c in checks) for status in (OK, WARN, FAIL, SKIP)}
    print(
        f"rossflow doctor: {counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed"
        + (f", {counts[SKIP]} skipped" if counts[SKIP] else "")
    )
    failed = counts[FAIL]
    sys.stdout.flush()
    return 1 if failed else 0
