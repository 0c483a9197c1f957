"""Dockerfile, compose file, .env.example and systemd units, checked by reading them (docker cannot run here)."""

from __future__ import annotations

import configparser
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from bkup.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.example.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
UNITS = sorted((ROOT / "docs" / "systemd").glob("*.service"))
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

SETTING_VARS = {env_name(f.name) for f in dataclasses.fields(Settings)}
# BKUP_* variables that are not settings but are read by bkup all the same.
OTHER_BKUP_VARS = {"BKUP_CONFIG"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            out[name] = value
    return out


def compose_variables() -> set[str]:
    """Every ${VAR} / ${VAR:-x} the compose file interpolates ($$VAR is escaped: the container's own)."""
    text = re.sub(r"\$\$", "", COMPOSE.read_text())
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))


def test_every_bkup_variable_in_the_deployment_files_is_a_setting():
    files = [DOCKERFILE, COMPOSE, ENV_EXAMPLE, *UNITS]
    assert len(UNITS) == 2
    unknown = {}
    for f in files:
        used = set(re.findall(r"\bBKUP_[A-Z0-9_]+\b", f.read_text()))
        bad = used - SETTING_VARS - OTHER_BKUP_VARS
        if bad:
            unknown[f.name] = sorted(bad)
    assert unknown == {}


def test_dockerfile_is_slim_non_root_with_healthcheck_volumes_and_the_default_port():
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip() and not line.startswith("#")]
    by = {}
    for ins in instructions:
        by.setdefault(ins[0].upper(), []).append(ins[1] if len(ins) > 1 else "")
    assert by["FROM"] == ["python:3.11-slim"]
    users = by["USER"]
    assert users and users[-1].strip() not in ("root", "0", "0:0")
    assert any("useradd" in r for r in by["RUN"])
    assert by["EXPOSE"] == [str(Settings().port)]
    assert "/healthz" in by["HEALTHCHECK"][0] and "BKUP_PORT" in by["HEALTHCHECK"][0]
    assert by["ENTRYPOINT"] == ['["bkup"]'] and by["CMD"] == ['["serve"]']
    assert "/var/lib/bkup" in by["VOLUME"][0] and "/etc/bkup" in by["VOLUME"][0]
    env = by["ENV"][0]
    for var in ("BKUP_DATA_DIR=/var/lib/bkup", "BKUP_CONFIG_DIR=/etc/bkup", "BKUP_HOST=0.0.0.0", f"BKUP_PORT={Settings().port}"):
        assert var in env
    # The build context is pyproject.toml, README.md and src/ only.
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!src/"]


def test_compose_has_the_documented_services_volumes_and_variables():
    c = compose()
    assert set(c["services"]) == {"postgres", "minio", "minio-init", "server", "agent"}
    assert set(c["volumes"]) == {"pgdata", "miniodata", "agentstate", "appdata"}
    server, agent, init = c["services"]["server"], c["services"]["agent"], c["services"]["minio-init"]
    assert server["command"] == ["serve"] and agent["command"][0] == "agent"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "mc mb --ignore-existing" in init["command"][0] and init["restart"] == "no"
    env = server["environment"]
    assert env["BKUP_DATABASE_URL"].startswith("postgresql://") and env["BKUP_STORAGE_URL"].startswith("s3://")
    assert env["BKUP_S3_ENDPOINT_URL"] == "http://minio:9000" and env["BKUP_MASTER_KEY"] == "${BKUP_MASTER_KEY}"
    assert server["ports"] == ["${PUBLISH_PORT}:8200"]
    # No local state on the server: it mounts no volume.
    assert "volumes" not in server
    assert agent["healthcheck"] == {"disable": True}
    assert "appdata:/backup:ro" in agent["volumes"] and agent["environment"]["BKUP_TOKEN"] == "${AGENT_TOKEN}"
    # Every volume a service mounts is declared, and every declared one is used.
    mounted = {v.split(":")[0] for s in c["services"].values() for v in s.get("volumes", [])}
    assert mounted == set(c["volumes"])


def test_env_example_has_exactly_the_variables_compose_reads():
    assert compose_variables() == set(env_example())


def test_compose_with_the_example_env_gives_each_service_what_bkup_needs():
    values = env_example()

    def interpolate(s: str) -> str:
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: values[m.group(1)], s)

    server = compose()["services"]["server"]
    env = {k: interpolate(str(v)) for k, v in server["environment"].items()}
    assert env["BKUP_DATABASE_URL"] == "postgresql://bkup:change-me-postgres@postgres:5432/bkup"
    assert env["BKUP_STORAGE_URL"] == "s3://bkup/bkup"
    from bkup.settings import load_settings

    settings = load_settings(env={k: v for k, v in env.items() if k.startswith("BKUP_")})
    assert settings.log_json is True and settings.s3_endpoint_url == "http://minio:9000"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_parse_and_run_bkup(unit):
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keys are case-sensitive in unit files
    cp.read_string(unit.read_text())
    assert {"Unit", "Service", "Install"} <= set(cp.sections())
    service = cp["Service"]
    command = "serve" if "server" in unit.name else "agent"
    assert re.match(rf"^/\S+/bkup {command}\b", service["ExecStart"])
    assert cp["Install"]["WantedBy"] == "multi-user.target"
    assert service["Restart"] in ("on-failure", "always")
    if command == "serve":
        assert service["User"] not in ("root", "0")
        assert "/var/lib/bkup" in service["ReadWritePaths"]


def test_deploy_doc_covers_docker_compose_and_systemd():
    text = DEPLOY_DOC.read_text()
    for needle in ("docker build", "compose.example.yaml", ".env.example", "bkup-server.service", "bkup-agent.service",
                   "/readyz", "BKUP_MASTER_KEY", "docker compose up -d --no-deps agent", "pip install"):
        assert needle in text, needle
