"""The deployment files, checked without Docker, Render or a cluster (issue 8).

* the Slack app manifests are exactly what `runbook-bot manifest` generates from the listeners
  build_app registers and bot.commands.ACTIONS, and cover every one of them;
* the Dockerfile passes hadolint, runs as a numeric non-root user, has a HEALTHCHECK on /health
  and `runbook-bot serve` as its entrypoint; what it copies exists and is not ignored;
* docker-compose.yaml validates against the Compose specification's schema; render.yaml and the
  Helm chart's Chart.yaml and values.yaml parse; every `.Values.…` a template uses exists; the
  configuration each of them gives the bot passes the bot's own configuration check.
"""
from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from bot import manifest
from bot.app import build_app, make_client
from bot.approvals import ACTION_APPROVE, ACTION_REJECT
from bot.commands import ACTIONS, ActionSpec
from bot.http import EVENTS_PATH
from runbook.config import ConfigError, parse_settings
from tests.support.slack import RecordingFlows, running_bot, signed_post, slash_command_body
from tests.support.slack import local_slack  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "runbook-bot"
BIN = Path(sys.executable).parent
SAMPLE_ENV = {"STATE_URL": "postgresql://runbook_bot:pw@state-db:5432/runbook_bot",
              "DATABASE_URL": "postgresql://app:pw@target-db:5432/home_budget",
              "SLACK_CHANNEL": "C0123456789", "APPROVER": "S0123GROUP"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


def required_variables(config_text: str) -> set[str]:
    """The ${VAR}s of a configuration that have no default."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", config_text))


# --------------------------------------------------------------------------
# the Slack app manifests


@pytest.mark.parametrize("socket, path", [(False, "slack-manifest.yaml"), (True, "slack-manifest.socket.yaml")])
def test_committed_manifests_are_the_generated_ones(socket, path):
    regenerate = f".venv/bin/runbook-bot manifest{' --socket' if socket else ''} > deploy/{path}"
    assert (DEPLOY / path).read_text() == manifest.generate(socket=socket), (
        f"deploy/{path} is out of date with the registered commands and actions: regenerate it with `{regenerate}`")


def test_the_manifest_covers_every_action_and_every_registered_listener():
    app = build_app(None, make_client("xoxb-manifest-test"), RecordingFlows())
    try:
        registered = app.registered
    finally:
        app.shutdown()
    data = yaml.safe_load(manifest.generate())
    [command] = data["features"]["slash_commands"]
    assert [("command", command["command"])] == [r for r in registered if r[0] == "command"]
    described = data["display_information"]["long_description"]
    for spec in ACTIONS.values():
        assert f"{spec.usage}: {spec.summary}" in described, f"{spec.name} is missing from the manifest"
    assert command["usage_hint"].startswith("help | status") and command["usage_hint"].endswith(" [env] [args]")
    assert len(command["usage_hint"]) <= manifest.USAGE_HINT_READABLE
    # every button the bot sends reaches a listener, and interactivity (the buttons' URL) is on
    patterns = [c for kind, c in registered if kind == "action" and isinstance(c, re.Pattern) and c.pattern != ".*"]
    for action_id in (ACTION_APPROVE, ACTION_REJECT):
        assert any(p.search(action_id) for p in patterns), action_id
    assert data["settings"]["interactivity"] == {"is_enabled": True, "request_url": command["url"]}
    assert urlsplit(command["url"]).path == EVENTS_PATH
    assert data["oauth_config"]["scopes"]["bot"] == ["commands", "chat:write", "files:write", "usergroups:read"]
    assert data["settings"]["socket_mode_enabled"] is False
    # the App Home (issue 14 §4): its Home tab, the Messages tab (DMs with the bot), and app_home_opened
    # over the same URL as everything else
    assert ("event", "app_home_opened") in registered
    assert data["features"]["app_home"] == {"home_tab_enabled": True, "messages_tab_enabled": True,
                                            "messages_tab_read_only_enabled": False}
    assert data["settings"]["event_subscriptions"] == {"request_url": command["url"], "bot_events": ["app_home_opened"]}


def test_the_socket_mode_manifest_has_no_url_at_all():
    text = (DEPLOY / "slack-manifest.socket.yaml").read_text()
    data = yaml.safe_load(text)
    # events come over the socket: subscribed, with no request URL
    assert data["settings"]["event_subscriptions"] == {"bot_events": ["app_home_opened"]}
    assert data["features"]["app_home"]["home_tab_enabled"] is True
    assert data["settings"]["socket_mode_enabled"] is True and data["settings"]["interactivity"] == {"is_enabled": True}
    assert "url" not in data["features"]["slash_commands"][0]
    assert "https://" not in text and "request_url" not in text
    assert "connections:write" in text                        # says which app-level token it needs


def test_the_manifest_request_url_is_where_the_bot_answers(local_slack):  # noqa: F811
    url = manifest.manifest(url="https://bot.example.org/")["features"]["slash_commands"][0]["url"]
    assert url == "https://bot.example.org/slack/events"
    assert manifest.events_url("https://bot.example.org/slack/events") == url
    flows = RecordingFlows()
    with running_bot(local_slack, flows) as bot:
        answer = signed_post(bot.url + urlsplit(url).path, slash_command_body("help"))
    flows.close()
    assert answer.status == 200 and "/migrate" in answer.text


@pytest.mark.parametrize("args, expected", [
    (["--url", "http://bot.example.org"], "must be the bot's public https:// address"),
    (["--url", "https://"], "must be the bot's public https:// address"),
    (["--url", "https://bot.example.org/?x=1"], "without ?query or #fragment"),
    (["--socket", "--url", "https://bot.example.org"], "Socket Mode has no request URLs"),
])
def test_bad_manifest_arguments_are_one_line(args, expected):
    result = subprocess.run([str(BIN / "runbook-bot"), "manifest", *args], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == ""
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_manifest_with_a_url_prints_it_and_needs_no_configuration(tmp_path):
    result = subprocess.run([str(BIN / "runbook-bot"), "manifest", "--url", "https://bot.example.org"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)   # no runbook-bot.yaml here
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["settings"]["interactivity"]["request_url"] == \
        "https://bot.example.org/slack/events"


def test_listeners_the_manifest_cannot_declare_stop_the_generation():
    app = build_app(None, make_client("xoxb-manifest-test"), RecordingFlows())
    try:
        app.event("app_mention")(lambda: None)
        with pytest.raises(manifest.ManifestError, match="registers event app_mention, which the manifest does not"):
            manifest.manifest(registered=manifest.classify(app.registered))
        app.command(re.compile("/mig.*"))(lambda: None)
        with pytest.raises(manifest.ManifestError, match="is a pattern"):
            manifest.classify(app.registered)
    finally:
        app.shutdown()


def test_slack_limits_are_checked_before_slack_sees_the_manifest():
    wordy = {**ACTIONS, "ramble": ActionSpec("ramble", "/migrate ramble", "x" * 4000, "")}
    too_long = r"long_description is \d+ characters long; Slack takes at most 4000"
    with pytest.raises(manifest.ManifestError, match=too_long):
        manifest.manifest(actions=wordy)
    many = {f"action{i}": ActionSpec(f"action{i}", f"/migrate action{i}", "does a thing", "") for i in range(40)}
    hint = manifest.usage_hint(many)
    assert hint.endswith("| … [env] [args]") and len(hint) <= manifest.USAGE_HINT_READABLE


# --------------------------------------------------------------------------
# the container


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage(dockerfile: DockerfileParser) -> list[dict]:
    starts = [i for i, item in enumerate(dockerfile.structure) if item["instruction"] == "FROM"]
    return dockerfile.structure[starts[-1]:]


def test_the_image_runs_the_bot_as_a_non_root_user_with_a_healthcheck():
    dockerfile = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    stage = final_stage(dockerfile)
    instructions = {item["instruction"]: item["value"] for item in stage}   # the last of each kind
    assert re.fullmatch(r"python:\d+\.\d+-slim-\w+", dockerfile.baseimage)
    user = instructions["USER"].split(":")[0]
    assert user.isdigit() and int(user) >= 1000                            # numeric: runAsNonRoot can check it
    healthcheck = instructions["HEALTHCHECK"]
    assert "/health" in healthcheck and "--timeout=" in healthcheck
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint[-2:] == ["runbook-bot", "serve"] and entrypoint[0].endswith("tini")
    assert json.loads(instructions["CMD"]) == ["--http"]
    assert dockerfile.args["PG_CLIENT_MAJORS"].split() == ["14", "15", "16", "17"]
    run = " ".join(item["value"] for item in stage if item["instruction"] == "RUN")
    assert "apt.postgresql.org" in run and "postgresql-client-${major}" in run
    assert "RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS=60" in instructions["ENV"]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out (its rules: the last matching pattern wins; ! re-includes)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_what_the_image_copies_exists_and_is_in_the_build_context():
    dockerfile = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for item in dockerfile.structure:
        if item["instruction"] == "COPY" and "--from=" not in item["value"]:
            sources += item["value"].split()[:-1]
    sources = [s.replace("${APP_SOURCE}", dockerfile.args["APP_SOURCE"]) for s in sources]
    assert {"pyproject.toml", "README.md", "runbook", "bot", "deploy/runbook-bot.yaml",
            "examples/home_budget"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "tests", "deploy/helm", "examples/other_app"):
        assert dockerignored(heavy, patterns), f"{heavy} would be sent to the build"


def test_the_images_default_configuration_reads_everything_from_the_environment():
    path = DEPLOY / "runbook-bot.yaml"
    settings = parse_settings(path.read_text(), source=path, environ=SAMPLE_ENV)
    env = settings.environments["production"]
    assert settings.state_url == SAMPLE_ENV["STATE_URL"] and env.dsn == SAMPLE_ENV["DATABASE_URL"]
    assert str(env.app_dir) == "/app" and str(env.pg_bin_dir) == "/usr/lib/postgresql/16/bin"
    assert env.approvals.approvers == ["S0123GROUP"] and env.required_approvals == 1
    with pytest.raises(ConfigError, match="environment variable SLACK_CHANNEL is not set"):
        parse_settings(path.read_text(), source=path, environ={k: v for k, v in SAMPLE_ENV.items()
                                                                if k != "SLACK_CHANNEL"})


# --------------------------------------------------------------------------
# docker compose


def compose_schema_errors(path: Path) -> str | None:
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True, timeout=120)
    return None if result.returncode == 0 else result.stdout + result.stderr


def test_compose_follows_the_compose_specification(tmp_path):
    assert compose_schema_errors(DEPLOY / "docker-compose.yaml") is None
    broken = load(DEPLOY / "docker-compose.yaml")
    broken["services"]["bot"]["depends_on"]["state-db"]["condition"] = "when_ready"    # not a Compose condition
    (tmp_path / "docker-compose.yaml").write_text(yaml.safe_dump(broken))
    assert "when_ready" in (compose_schema_errors(tmp_path / "docker-compose.yaml") or "")


def interpolated(value: str, environ: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, enough for this file."""
    def replace(match: re.Match) -> str:
        name, op, word = match.group(1), match.group(2), match.group(3)
        if name in environ:
            return environ[name]
        if op == ":-":
            return word
        raise AssertionError(f"{name} is required: {word}")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", replace, value)


def test_compose_runs_the_bot_socket_mode_with_its_state_and_a_sample_target():
    compose = load(DEPLOY / "docker-compose.yaml")
    bot, state, target = (compose["services"][name] for name in ("bot", "state-db", "target-db"))
    assert bot["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / bot["build"]["context"] / bot["build"]["dockerfile"]).is_file()
    assert "../examples/home_budget:/app:ro" in bot["volumes"]
    assert (DEPLOY / "../examples/home_budget/alembic.ini").is_file()
    assert {"state-db", "target-db"} <= set(bot["depends_on"])
    for service in (state, target):
        assert service["image"].startswith("postgres:") and "pg_isready" in " ".join(service["healthcheck"]["test"])
    # secrets are only ever ${...} references, never values in the file
    for key in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        assert bot["environment"][key].startswith("${"), key
    assert all("${" in service["environment"]["POSTGRES_PASSWORD"] for service in (state, target))
    # with the example's variables, compose hands the image's configuration a valid setting
    example = dict(line.split("=", 1) for line in (DEPLOY / "compose.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    environ = {k: interpolated(str(v), example) for k, v in bot["environment"].items()}
    path = DEPLOY / "runbook-bot.yaml"
    settings = parse_settings(path.read_text(), source=path, environ=environ)
    assert settings.state_url.startswith("postgresql://runbook_bot:") and "@state-db:5432/" in settings.state_url
    assert "@target-db:5432/home_budget" in settings.environments["production"].dsn
    assert interpolated(bot["command"][0], example) == "--socket"
    assert bot["stop_grace_period"] and int(bot["stop_grace_period"].rstrip("s")) > \
        int(interpolated(bot["environment"]["RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS"], example))


# --------------------------------------------------------------------------
# Render


def test_render_blueprint_runs_http_mode_with_a_state_database_and_every_variable():
    blueprint = load(DEPLOY / "render.yaml")
    [web] = blueprint["services"]
    assert (web["type"], web["runtime"], web["healthCheckPath"]) == ("web", "docker", "/health")
    assert (ROOT / web["dockerfilePath"]).is_file() and (ROOT / web["dockerContext"]).is_dir()
    assert "dockerCommand" not in web                       # the image's CMD: serve --http
    databases = {db["name"] for db in blueprint["databases"]}
    variables = {}
    for item in web["envVars"]:
        if "fromDatabase" in item:
            assert item["fromDatabase"]["name"] in databases and item["fromDatabase"]["property"] == "connectionString"
        elif item.get("sync") is False:
            assert "value" not in item                      # a secret: asked for, never stored here
        else:
            assert isinstance(item["value"], str)
        variables[item["key"]] = item
    needed = required_variables((DEPLOY / "runbook-bot.yaml").read_text()) | {"SLACK_BOT_TOKEN",
                                                                               "SLACK_SIGNING_SECRET", "STATE_URL"}
    assert needed <= set(variables), needed - set(variables)
    for secret in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "DATABASE_URL"):
        assert variables[secret].get("sync") is False
    assert int(variables["RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS"]["value"]) < web["maxShutdownDelaySeconds"] <= 300


# --------------------------------------------------------------------------
# the Helm chart


def template_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir()) if p.is_file()}


def test_chart_and_values_parse():
    chart = load(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["name"] == CHART.name and chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"]) and chart["appVersion"]
    values = load(CHART / "values.yaml")
    assert values["replicaCount"] >= 2 and values["existingSecret"]
    assert {"deployment.yaml", "service.yaml", "configmap.yaml", "ingress.yaml", "NOTES.txt"} <= set(template_texts())


def value_paths(node, prefix: str = "") -> set[str]:
    paths = {prefix} if prefix else set()
    if isinstance(node, dict):
        for key, child in node.items():
            paths |= value_paths(child, f"{prefix}.{key}" if prefix else str(key))
    return paths


def test_every_value_a_template_uses_exists_in_values_yaml():
    known = value_paths(load(CHART / "values.yaml"))
    used = set()
    for name, text in template_texts().items():
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            used.add(path.rstrip("."))
            assert path.rstrip(".") in known, f"{name} uses .Values.{path}, which values.yaml does not define"
    assert {"replicaCount", "existingSecret", "config", "ingress.enabled", "resources", "securityContext",
            "podSecurityContext", "shutdownGraceSeconds"} <= used


def test_templates_are_well_formed():
    """Every {{ }} closed; every if/with/range/define block ended (helm itself is not on this machine)."""
    for name, text in template_texts().items():
        assert text.count("{{") == text.count("}}"), name
        depth = 0
        for action in re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", text, re.S):
            keyword = action.split()[0] if action.split() else ""
            if keyword in ("if", "with", "range", "define", "block"):
                depth += 1
            elif keyword == "end":
                depth -= 1
                assert depth >= 0, f"{name}: an end without a block"
        assert depth == 0, f"{name}: {depth} block(s) not ended"


def test_the_deployment_probes_health_runs_non_root_and_outlives_its_grace():
    deployment = template_texts()["deployment.yaml"]
    values = load(CHART / "values.yaml")
    assert re.search(r"readinessProbe:\s+httpGet:\s+path: /health\s", deployment)
    assert re.search(r"livenessProbe:\s+httpGet:\s+path: /health\?check=live\s", deployment)
    assert 'args: ["--http"]' in deployment and "replicas: {{ .Values.replicaCount }}" in deployment
    assert "secretRef:" in deployment and "name: {{ .Values.existingSecret }}" in deployment
    assert values["podSecurityContext"]["runAsNonRoot"] is True and values["podSecurityContext"]["runAsUser"] >= 1000
    assert values["securityContext"]["allowPrivilegeEscalation"] is False
    assert values["resources"]["requests"] and values["resources"]["limits"]
    assert values["terminationGracePeriodSeconds"] > values["preStopSleepSeconds"] + values["shutdownGraceSeconds"]
    assert "kind: Ingress" in template_texts()["ingress.yaml"] and values["ingress"]["enabled"] is False


def test_the_charts_configuration_is_valid_for_the_bot_and_its_secret_covers_it():
    values = load(CHART / "values.yaml")
    text = yaml.safe_dump(values["config"])
    settings = parse_settings(text, source=CHART / "values.yaml", environ=SAMPLE_ENV)
    assert settings.state_url.startswith("postgresql://")           # several replicas share it
    assert required_variables(text) <= set(values["requiredSecretKeys"])
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"} <= set(values["requiredSecretKeys"])
    assert "toYaml .Values.config" in template_texts()["configmap.yaml"]


def test_helm_is_not_silently_assumed():
    """The chart is checked statically above; when helm is installed, lint it for real too."""
    helm = shutil.which("helm")
    if helm is None:
        assert not (CHART / "charts").exists()          # no dependencies that a lint would have to fetch
        return
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
