"""The production stack (docker-compose.temporal.yml, Dockerfile, deploy/) agrees with the code.

No Docker engine runs here, so these tests read the files and hold them to what they deploy:
Settings fields, CLI commands, search attributes and the Temporal version. The namespace script,
which only needs the ``temporal`` CLI, also runs for real against the session's dev server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.common import SearchAttributeIndexedValueType

from core.contracts import SEARCH_ATTRIBUTES, webhook_workflow_id
from core.settings import Settings
from devstack.temporal import TemporalDevServer

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DIR = ROOT / "deploy" / "temporal"
NAMESPACE_SCRIPT = DEPLOY_DIR / "create-namespace.sh"
DYNAMIC_CONFIG = DEPLOY_DIR / "dynamicconfig.yaml"
SHELL_SCRIPTS = sorted(DEPLOY_DIR.glob("*.sh"))

CLI_COMMANDS = {"api", "worker", "migrate", "gateway"}
SETTINGS_VARIABLES = {f"SWITCHBOARD_{name.upper()}" for name in Settings.model_fields}
TEMPORAL_MINOR = (1, 32)
# Temporal's SQL schema stores workflow ids as VARCHAR(255); ours are built to fit.
MAX_SQL_ID_LENGTH = 255
ONE_SHOT_RESTARTS = ("no", "on-failure")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two compose forms it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): str(value) for key, value in raw.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> start condition (the short list form means ``service_started``)."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def _app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services running our own image (the ones built from the Dockerfile)."""
    return {name: service for name, service in services.items() if "build" in service}


def _image_version(image: str) -> tuple[int, ...]:
    tag = image.rpartition(":")[2]
    assert re.fullmatch(r"\d+(\.\d+)*", tag), f"{image} is not pinned to a version tag"
    return tuple(int(part) for part in tag.split("."))


def _script_path(service: dict[str, Any]) -> Path:
    """The deploy/temporal script a one-shot job runs (mounted at /scripts)."""
    command = service["command"]
    script: str = command[-1] if isinstance(command, list) else command.split()[-1]
    assert script.startswith("/scripts/"), script
    return DEPLOY_DIR / script.removeprefix("/scripts/")


def test_switchboard_variables_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    """Every SWITCHBOARD_* variable a service sets or the file interpolates is a Settings field."""
    set_anywhere = {
        key
        for service in services.values()
        for key in _environment(service)
        if key.startswith("SWITCHBOARD_")
    }
    interpolated = set(re.findall(r"\$\{(SWITCHBOARD_[A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    assert set_anywhere, "no SWITCHBOARD_* variables found"
    assert set_anywhere - SETTINGS_VARIABLES == set()
    assert interpolated - SETTINGS_VARIABLES == set()


def test_app_services_are_configured_only_through_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    """Our containers get only SWITCHBOARD_* variables, a production environment and real URLs."""
    apps = _app_services(services)
    assert set(apps) == {"migrate", "api", "worker", "gateway"}
    for name, service in apps.items():
        env = _environment(service)
        assert "env_file" not in service, name
        assert {key for key in env if not key.startswith("SWITCHBOARD_")} == set(), name
        assert env["SWITCHBOARD_ENVIRONMENT"] == "production", name
        assert env["SWITCHBOARD_ADMIN_API_KEY"].startswith("${SWITCHBOARD_ADMIN_API_KEY:?"), name
        assert "@postgres:5432/" in env["SWITCHBOARD_DATABASE_URL"], name
        assert env["SWITCHBOARD_REDIS_URL"].startswith("redis://redis:6379"), name
        assert env["SWITCHBOARD_TEMPORAL_ADDRESS"] == "temporal:7233", name
    assert _environment(apps["api"])["SWITCHBOARD_API_HOST"] == "0.0.0.0"


def test_app_services_run_real_cli_commands(services: dict[str, dict[str, Any]]) -> None:
    """Each app service runs one `switchboard` command: api, worker, migrate or (opt-in) gateway."""
    commands = {name: service["command"] for name, service in _app_services(services).items()}
    for name, command in commands.items():
        assert isinstance(command, list) and len(command) == 1, (name, command)
        assert command[0] in CLI_COMMANDS, (name, command)
    assert {command[0] for command in commands.values()} == CLI_COMMANDS
    assert services["gateway"]["profiles"] == ["gateway"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "switchboard" in scripts
    assert 'ENTRYPOINT ["switchboard"]' in DOCKERFILE.read_text()


def test_namespace_script_registers_every_search_attribute(
    services: dict[str, dict[str, Any]],
) -> None:
    """The namespace script names exactly our search attributes and creates them as Keyword."""
    assert _script_path(services["temporal-create-namespace"]) == NAMESPACE_SCRIPT
    script = NAMESPACE_SCRIPT.read_text()
    listed = re.search(r'^SEARCH_ATTRIBUTES="([^"]*)"$', script, re.MULTILINE)
    assert listed is not None
    assert set(listed.group(1).split()) == {key.name for key in SEARCH_ATTRIBUTES}
    assert len(listed.group(1).split()) == len(SEARCH_ATTRIBUTES)
    assert all(
        key.indexed_value_type == SearchAttributeIndexedValueType.KEYWORD
        for key in SEARCH_ATTRIBUTES
    )
    assert "search-attribute create" in script
    assert "--type Keyword" in script
    assert _environment(services["temporal-create-namespace"])["NAMESPACE_RETENTION"] == "7d"


def test_namespace_script_creates_namespace_and_attributes(
    temporal_server: TemporalDevServer, tmp_path: Path
) -> None:
    """Run twice on a live server, the script leaves the namespace (7d) and attributes ready."""
    namespace = f"compose-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "temporal.toml"
    config.write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith("TEMPORAL_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "TEMPORAL_CONFIG_FILE": str(config),
        "TEMPORAL_ADDRESS": temporal_server.address,
        "NAMESPACE": namespace,
        "WAIT_SECONDS": "0.2",
        "WAIT_ATTEMPTS": "150",
    }
    for _ in range(2):
        run = subprocess.run(
            ["sh", str(NAMESPACE_SCRIPT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr

    described = temporal_server.cli(
        "operator", "namespace", "describe", "--namespace", namespace, "--output", "json"
    )
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["config"]["workflowExecutionRetentionTtl"] == "604800s"
    listed = temporal_server.cli(
        "operator", "search-attribute", "list", "--namespace", namespace, "--output", "json"
    )
    assert listed.returncode == 0, listed.stderr
    custom = json.loads(listed.stdout)["customAttributes"]
    assert {key.name: custom.get(key.name) for key in SEARCH_ATTRIBUTES} == {
        key.name: "INDEXED_VALUE_TYPE_KEYWORD" for key in SEARCH_ATTRIBUTES
    }


def test_temporal_images_are_pinned_to_1_32(services: dict[str, dict[str, Any]]) -> None:
    """The server runs 1.32.x and every admin-tools job uses exactly the server's tag."""
    server_version = _image_version(services["temporal"]["image"])
    assert server_version[:2] == TEMPORAL_MINOR
    admin_tools = [
        service["image"]
        for service in services.values()
        if service.get("image", "").startswith("temporalio/admin-tools:")
    ]
    assert len(admin_tools) == 2
    assert {_image_version(image) for image in admin_tools} == {server_version}
    assert _image_version(services["temporal-ui"]["image"])[0] == 2
    env = _environment(services["temporal"])
    assert env["DB"] == "postgres12"
    assert int(env["NUM_HISTORY_SHARDS"]) >= 512


def test_dependencies_exist_and_their_conditions_can_be_met(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every depends_on target exists, is healthchecked or one-shot as its condition needs."""
    for name, service in services.items():
        for target, condition in _depends_on(service).items():
            assert target in services, f"{name} depends on missing service {target}"
            dependency = services[target]
            if condition == "service_healthy":
                assert "healthcheck" in dependency, f"{name} waits for {target}'s healthcheck"
            elif condition == "service_completed_successfully":
                restart = str(dependency.get("restart", "no"))
                assert restart.startswith(ONE_SHOT_RESTARTS), f"{target} is not a one-shot job"
            else:
                assert condition == "service_started", (name, target, condition)
            if "profiles" not in service:
                assert "profiles" not in dependency, f"{name} depends on opt-in {target}"


def test_start_order_puts_migrations_and_namespace_first(
    services: dict[str, dict[str, Any]],
) -> None:
    """Api and worker wait for migrations, the worker for the namespace, Temporal for its schema."""
    assert _depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    api = _depends_on(services["api"])
    assert api["migrate"] == "service_completed_successfully"
    assert api["redis"] == "service_healthy"
    worker = _depends_on(services["worker"])
    assert worker["migrate"] == "service_completed_successfully"
    assert worker["temporal-create-namespace"] == "service_completed_successfully"
    temporal = _depends_on(services["temporal"])
    assert temporal["temporal-admin-tools"] == "service_completed_successfully"
    assert services["temporal-admin-tools"]["restart"] == "on-failure:6"


@pytest.mark.parametrize("name", ["temporal-postgresql", "postgres", "redis", "temporal", "api"])
def test_long_running_core_services_have_healthchecks(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """The databases, Redis, the Temporal server and the api each declare a healthcheck."""
    healthcheck = services[name].get("healthcheck") or {}
    assert not healthcheck.get("disable", False)
    test = healthcheck.get("test")
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    if name == "api":
        assert any("/healthz" in part for part in test)


def test_app_databases_are_separate_and_secrets_required(
    services: dict[str, dict[str, Any]],
) -> None:
    """Temporal and the app use different Postgres services whose passwords must be supplied."""
    temporal_db = _environment(services["temporal-postgresql"])
    app_db = _environment(services["postgres"])
    assert temporal_db["POSTGRES_USER"] != app_db["POSTGRES_USER"]
    for env in (temporal_db, app_db):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", env["POSTGRES_PASSWORD"])
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]


def test_dockerfile_installs_from_the_runtime_lock_then_the_package() -> None:
    """The image installs requirements-runtime.lock (never the development lock), then the
    project with --no-deps, and runs non-root."""
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]

    def first(pattern: str) -> int:
        matches = [index for index, line in enumerate(lines) if re.search(pattern, line)]
        assert matches, pattern
        return matches[0]

    assert first(r"^FROM python:3\.11-slim\b") == first(r"^FROM ")
    lock_copy = first(r"^COPY pyproject\.toml requirements-runtime\.lock ")
    lock_install = first(r"pip install -r \S*requirements-runtime\.lock")
    assert not [line for line in lines if re.search(r"requirements\.lock|\[dev\]", line)]
    source_copy = first(r"^COPY \. ")
    package_install = first(r"pip install --no-deps ")
    assert lock_copy < lock_install < source_copy < package_install
    user = lines[first(r"^USER ")].split()[1].split(":")[0]
    assert user not in ("root", "0")
    assert lines[first(r"^ENTRYPOINT ")] == 'ENTRYPOINT ["switchboard"]'


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    """The build context excludes the venv, dev data, .env files, caches and git history."""
    ignored = set(DOCKERIGNORE.read_text().splitlines())
    assert {".venv", ".switchboard", ".env", ".git", ".mypy_cache", ".pytest_cache"} <= ignored


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_deploy_scripts_parse(script: Path, shell: str) -> None:
    """Each deploy script uses set -eu and parses under bash and POSIX sh (images run BusyBox)."""
    checked = subprocess.run(
        [shell, "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stderr
    assert re.search(r"^set -eu$", script.read_text(), re.MULTILINE)


def test_one_shot_jobs_run_scripts_that_exist(services: dict[str, dict[str, Any]]) -> None:
    """The schema and namespace jobs run deploy/temporal scripts that are present."""
    jobs = ["temporal-admin-tools", "temporal-create-namespace"]
    for job in jobs:
        assert _script_path(services[job]) in SHELL_SCRIPTS, job
        assert "./deploy/temporal:/scripts:ro" in services[job]["volumes"], job


def test_dynamic_config_allows_our_workflow_ids(services: dict[str, dict[str, Any]]) -> None:
    """The mounted dynamic config parses, caps ids at the SQL column width, pins the matcher."""
    config = yaml.safe_load(DYNAMIC_CONFIG.read_text())
    lengths = [entry["value"] for entry in config["limit.maxIDLength"]]
    assert lengths == [MAX_SQL_ID_LENGTH]
    assert [entry["value"] for entry in config["matching.useNewMatcher"]] == [True]
    assert "system.forceSearchAttributesCacheRefreshOnRead" not in config
    server = services["temporal"]
    mounted = _environment(server)["DYNAMIC_CONFIG_FILE_PATH"]
    assert f"./deploy/temporal/dynamicconfig.yaml:{mounted}:ro" in server["volumes"]


def test_longest_workflow_ids_fit_the_sql_limit() -> None:
    """The longest partner and webhook ids, replayed many times, still make a valid id."""
    longest = webhook_workflow_id("p" * 64, "w" * 255, run=99999)
    assert len(longest) <= MAX_SQL_ID_LENGTH
    assert webhook_workflow_id("acme", "msg_1") == "webhook:acme:msg_1"


def test_production_settings_accept_the_compose_environment(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each app container's environment, with its required secrets filled in as an operator
    would, makes production Settings that start; without them, compose refuses to run."""
    secrets = {
        "SWITCHBOARD_ADMIN_API_KEY": "sb_" + "k" * 40,
        "SWITCHBOARD_DASHBOARD_TOKEN_SECRET": "d" * 48,
        "SWITCHBOARD_SLACK_BOT_TOKEN": "xoxb-real-token",
        "SWITCHBOARD_SLACK_SIGNING_SECRET": "s" * 32,
        "SWITCHBOARD_PAGERDUTY_ROUTING_KEY": "r" * 32,
        "SWITCHBOARD_PAYOUT_BASE_URL": "https://payouts.example.com",
        "SWITCHBOARD_PAYOUT_API_KEY": "sk_live_" + "p" * 24,
        "APP_POSTGRES_PASSWORD": "pw",
    }

    def interpolate(value: str) -> str:
        def one(found: re.Match[str]) -> str:
            name, _, rest = found.group(1).partition(":")
            if name in secrets:
                return secrets[name]
            assert rest.startswith("-"), f"${{{name}}} has neither a default nor a secret"
            return rest[1:]

        return re.sub(r"\$\{([^}]+)\}", one, value)

    for name, service in _app_services(services).items():
        env = {key: interpolate(value) for key, value in _environment(service).items()}
        required = {key for key, value in _environment(service).items() if ":?" in value}
        assert {
            "SWITCHBOARD_SLACK_BOT_TOKEN",
            "SWITCHBOARD_SLACK_SIGNING_SECRET",
            "SWITCHBOARD_PAGERDUTY_ROUTING_KEY",
            "SWITCHBOARD_PAYOUT_BASE_URL",
            "SWITCHBOARD_PAYOUT_API_KEY",
        } <= required, name
        with monkeypatch.context() as patched:
            for key in [key for key in os.environ if key.startswith("SWITCHBOARD_")]:
                patched.delenv(key)
            for key, value in env.items():
                patched.setenv(key, value)
            settings = Settings(_env_file=None)
        assert settings.environment == "production", name
        assert settings.slack_base_url.startswith("https://"), name
        assert settings.payout_base_url == "https://payouts.example.com", name
