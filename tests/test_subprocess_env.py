"""Issue 13 §1: no subprocess gets the bot's secrets (design rule 17).

The app's own code runs in the bot's subprocesses (its Alembic renders the SQL preview at every
precheck, before any approval; then upgrades; its smoke command validates), and so do pg_dump,
pg_restore, psql and squawk. Each gets an environment built from the allowlist of
runbook.subprocess_env: a revision that reads os.environ at import must not find the Slack signing
secret (with which it could sign an Approve click), the tokens, or RUNBOOK_BOT_* settings.

Real CLI processes, the real sample app's Alembic, real pg_dump/pg_restore/psql 16 and squawk, each
tool behind a spy that records its environment and then execs the real binary.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from runbook.config import ConfigError, parse_settings
from runbook.pgtools import client_env
from runbook.subprocess_env import subprocess_env
from tests.support.migrations import alembic_version, app_copy, PASSWORD
from tests.support.configs import config_text, with_password
from tests.support.sample_app import APP_DIR, REV_0003

ROOT = Path(__file__).resolve().parent.parent
PROBE = "0004_env_probe"

# What the bot's process holds and no subprocess may see.
BOT_SECRETS = {
    "SLACK_SIGNING_SECRET": "signing-secret-0f9e8d7c",
    "SLACK_BOT_TOKEN": "xoxb-bot-token-1a2b3c",
    "SLACK_APP_TOKEN": "xapp-app-token-4d5e6f",
    "SLACK_API_URL": "http://127.0.0.1:9/api/",
    "GITHUB_TOKEN": "ghp_githubtoken7g8h9i",
    "GH_TOKEN": "gho_ghtoken0j1k2l",
    "RUNBOOK_BOT_SOMETHING": "runbook-bot-setting-3m4n",
}
# Listed in app_env: the app's code gets it, the PostgreSQL tools do not.
APP_SECRET = ("SECRET_KEY", "app-secret-key-5o6p")
# In the bot's environment but listed nowhere: nobody gets it.
UNLISTED = ("SOME_OTHER_SERVICE_PASSWORD", "unlisted-7q8r")


def _spy(bin_dir: Path, dumps: Path, name: str, real: Path) -> Path:
    """An executable `name` that writes its environment to dumps/NAME-*.json, then execs `real`."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n"
                    "import json, os, sys, uuid\n"
                    f"with open(os.path.join({str(dumps)!r}, {name!r} + '-' + uuid.uuid4().hex + '.json'), 'w') as f:\n"
                    "    json.dump(dict(os.environ), f)\n"
                    f"os.execv({str(real)!r}, [{str(real)!r}, *sys.argv[1:]])\n")
    path.chmod(0o755)
    return path


def _probe_app(tmp_path: Path, dumps: Path) -> Path:
    """The sample app with a pending revision whose import writes its os.environ to dumps/alembic-*.json."""
    app = app_copy(tmp_path, [(PROBE, 'op.create_table("env_probe", sa.Column("id", sa.Integer, primary_key=True))',
                               'op.drop_table("env_probe")')])
    revision = app / "alembic" / "versions" / f"{PROBE}.py"
    revision.write_text(revision.read_text() + (
        "\n\nimport json as _json, os as _os, uuid as _uuid\n"
        f"with open(_os.path.join({str(dumps)!r}, 'alembic-' + _uuid.uuid4().hex + '.json'), 'w') as _f:\n"
        "    _json.dump(dict(_os.environ), _f)\n"))
    return app


def _dumps(dumps: Path, tool: str) -> list[dict[str, str]]:
    return [json.loads(p.read_text()) for p in sorted(dumps.glob(f"{tool}-*.json"))]


def _assert_nothing_of_the_bot(env: dict[str, str], who: str) -> None:
    leaked = sorted(n for n in env if n.startswith(("SLACK_", "GITHUB_", "GH_", "RUNBOOK_BOT_")))
    assert not leaked, f"{who} got {leaked}"
    assert UNLISTED[0] not in env, f"{who} got {UNLISTED[0]}"
    assert "PGPASSWORD" not in env, f"{who} got PGPASSWORD"
    values = "\n".join(env.values())
    for name, value in BOT_SECRETS.items():
        assert value not in values, f"{who} got the value of {name}"


def test_no_subprocess_of_precheck_or_migrate_gets_the_bots_secrets(sample_db, pg_bin_dir, tmp_path):
    dumps, spies = tmp_path / "dumps", tmp_path / "bin"
    dumps.mkdir()
    spies.mkdir()
    for tool in ("pg_dump", "pg_restore", "psql"):
        _spy(spies, dumps, tool, pg_bin_dir / tool)
    squawk = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if squawk is None:
        pytest.skip("squawk is not installed")
    _spy(spies, dumps, "squawk", Path(squawk))
    smoke = [sys.executable, "-c", "import json, os, sys; "
             f"json.dump(dict(os.environ), open(os.path.join({str(dumps)!r}, 'smoke-1.json'), 'w'))"]

    url = with_password(sample_db(REV_0003), PASSWORD)
    app = _probe_app(tmp_path, dumps)
    extra = "\n".join([
        f"    pg_bin_dir: {json.dumps(str(spies))}",
        f"    app_env: [{APP_SECRET[0]}]",
        f"    validation: {json.dumps({'tables': ['expenses'], 'smoke_command': smoke})}",
        f"    review: {json.dumps({'squawk': [str(spies / 'squawk')]})}",
    ])
    config = tmp_path / "runbook-bot.yaml"
    config.write_text(config_text(url, extra_env=extra).replace(json.dumps(str(APP_DIR)), json.dumps(str(app))))
    bot_env = {**os.environ, **BOT_SECRETS, APP_SECRET[0]: APP_SECRET[1], UNLISTED[0]: UNLISTED[1],
               "RUNBOOK_BOT_CACHE_DIR": str(tmp_path / "preview-cache")}   # a fresh cache: the preview runs

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], cwd=ROOT,
                              env=bot_env, capture_output=True, text=True, timeout=240)

    checked = cli("precheck", "--json")
    assert checked.returncode in (0, 1), checked.stderr
    assert PROBE in checked.stdout                                 # the SQL preview rendered the probe
    previews = _dumps(dumps, "alembic")
    assert previews, "the SQL preview did not import the pending revision"
    assert _dumps(dumps, "squawk"), "squawk did not review the preview"

    ran = cli("migrate", "--yes")
    assert ran.returncode == 0, ran.stderr
    assert alembic_version(url) == [PROBE]

    app_runs = _dumps(dumps, "alembic")
    assert len(app_runs) > len(previews), "the upgrade did not import the revision"
    assert any("lock_timeout=" in e.get("PGOPTIONS", "") for e in app_runs)     # the upgrade's own session
    [smoked] = _dumps(dumps, "smoke")
    for who, env in [*((f"alembic #{i}", e) for i, e in enumerate(app_runs)), ("the smoke command", smoked)]:
        _assert_nothing_of_the_bot(env, who)
        assert env.get(APP_SECRET[0]) == APP_SECRET[1], f"{who} did not get app_env's {APP_SECRET[0]}"
        database = urlsplit(url).path                              # the URL's spelling may differ
        assert database in env.get("DATABASE_URL", "") and PASSWORD in env["DATABASE_URL"], f"{who}: no url_env"
        assert env.get("PATH") == os.environ["PATH"]

    for tool in ("pg_dump", "pg_restore", "squawk"):     # the backup first (dump, verify), the review
        seen = _dumps(dumps, tool)
        assert seen, f"{tool} never ran"
        for env in seen:
            _assert_nothing_of_the_bot(env, tool)
            assert APP_SECRET[0] not in env, f"{tool} got the app's {APP_SECRET[0]}"
            assert "DATABASE_URL" not in env
    dumped = [e for e in _dumps(dumps, "pg_dump") if "PGPASSFILE" in e]
    assert dumped, "pg_dump never got the passfile"


def test_client_tools_env_is_the_allowlist_with_a_passfile(monkeypatch):
    for name, value in {**BOT_SECRETS, APP_SECRET[0]: APP_SECRET[1], UNLISTED[0]: UNLISTED[1],
                        "PGPASSWORD": "inherited-pw", "PGPASSFILE": "/inherited/pgpass", "PGSSLROOTCERT": "/ca.pem",
                        "LC_ALL": "C.UTF-8"}.items():
        monkeypatch.setenv(name, value)
    with client_env("s3cret:pw") as env:
        _assert_nothing_of_the_bot(env, "client_env")
        assert APP_SECRET[0] not in env
        assert env["PGPASSFILE"] != "/inherited/pgpass" and Path(env["PGPASSFILE"]).read_text() == "*:*:*:*:s3cret\\:pw\n"
        assert (env["PGSSLROOTCERT"], env["LC_ALL"], env["PATH"]) == ("/ca.pem", "C.UTF-8", os.environ["PATH"])
    with client_env("") as env:
        assert "PGPASSFILE" not in env and "PGPASSWORD" not in env


def test_the_allowlist_drops_forbidden_names_even_when_asked_for_them():
    source = {"PATH": "/bin", "HOME": "/home/bot", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC", "TMPDIR": "/tmp",
              "PGOPTIONS": "-c search_path=app", "PGPASSWORD": "pw", **BOT_SECRETS,
              APP_SECRET[0]: APP_SECRET[1], UNLISTED[0]: UNLISTED[1]}
    env = subprocess_env(app_env=[APP_SECRET[0], "SLACK_BOT_TOKEN", "GITHUB_TOKEN"], source=source,
                         set_vars={"DATABASE_URL": "postgresql://db/app"})
    assert env == {"PATH": "/bin", "HOME": "/home/bot", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC",
                   "TMPDIR": "/tmp", "PGOPTIONS": "-c search_path=app", APP_SECRET[0]: APP_SECRET[1],
                   "DATABASE_URL": "postgresql://db/app"}
    assert "PGOPTIONS" not in subprocess_env(libpq=False, source=source)


@pytest.mark.parametrize(("lines", "github", "error"), [
    ("    app_env: [SECRET_KEY, SLACK_SIGNING_SECRET]", "",
     "environments.production.app_env[1]: Value error, SLACK_SIGNING_SECRET may never be passed to the app's "
     "subprocesses"),
    ("    app_env: [GH_TOKEN]", "", "environments.production.app_env[0]: Value error, GH_TOKEN may never be passed"),
    ("    app_env: [runbook_bot_config]", "",
     "environments.production.app_env[0]: Value error, runbook_bot_config may never be passed"),
    ("    url_env: GITHUB_TOKEN", "", "environments.production.url_env: Value error, GITHUB_TOKEN may never be passed"),
    ("    app_env: [ISSUE_TOKEN]", "  github: {repo: acme/api, token_env: ISSUE_TOKEN}\n",
     "environments.production.app_env: ISSUE_TOKEN holds the GitHub token (escalation.github.token_env) and may "
     "never be passed to the app's subprocesses"),
])
def test_a_configuration_passing_a_bot_secret_to_the_app_is_refused_in_one_line(tmp_path, lines, github, error):
    text = config_text("postgresql://db/app", extra_env=lines) + github
    path = tmp_path / "runbook-bot.yaml"
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, source=path, environ={})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: {error}"), message


def test_app_env_is_read_from_the_configuration(tmp_path):
    text = config_text("postgresql://db/app", extra_env="    app_env: [SECRET_KEY, SENTRY_DSN]")
    settings = parse_settings(text, source=tmp_path / "runbook-bot.yaml", environ={})
    assert settings.environments["production"].app_env == ["SECRET_KEY", "SENTRY_DSN"]
    bare = parse_settings(config_text("postgresql://db/app"), source=tmp_path / "runbook-bot.yaml", environ={})
    assert bare.environments["production"].app_env == []


def test_the_pause_hook_keeps_the_operators_environment_but_nothing_of_the_bot(tmp_path, monkeypatch):
    """The hook is the operator's own command (kubectl needs KUBECONFIG), not the app's code: it keeps
    the environment, less every Slack, GitHub and inherited RUNBOOK_BOT_* variable."""
    from runbook import escalation as levels
    from runbook.config import PauseHook

    for name, value in {**BOT_SECRETS, "KUBECONFIG": "/etc/kube/config"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "hook.json"
    script = tmp_path / "hook.py"
    script.write_text(f"import json, os\njson.dump(dict(os.environ), open({str(out)!r}, 'w'))\n")
    result = levels.run_pause_hook(PauseHook(argv=[sys.executable, str(script)]), environment="production",
                                   level=3, reason="outage", secrets=())
    assert result.ok, result.error
    env = json.loads(out.read_text())
    assert env["KUBECONFIG"] == "/etc/kube/config"
    assert (env["RUNBOOK_BOT_ENVIRONMENT"], env["RUNBOOK_BOT_LEVEL"], env["RUNBOOK_BOT_REASON"]) == \
        ("production", "3", "outage")
    inherited = {n: env.get(n) for n in BOT_SECRETS}
    assert inherited == dict.fromkeys(BOT_SECRETS), inherited
