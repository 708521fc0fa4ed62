"""Settings: a YAML file with ${VAR} interpolation, validated by pydantic.

Every problem is reported as one ConfigError line naming the key at fault; the
offending value is never echoed (it may be a password).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from runbook import subprocess_env
from runbook.dsn import libpq_url
# The file itself (YAML, ${VAR}, relative paths) is read without pydantic: see config_source.
from runbook.config_source import (CONFIG_ENV, DEFAULT_CONFIG_NAME, ConfigError, config_path,  # noqa: F401
                                   raw_settings, read_config)

SlackUserOrGroup = Annotated[str, StringConstraints(pattern=r"^[UWS][A-Z0-9]{2,}$")]
SlackChannel = Annotated[str, StringConstraints(pattern=r"^[CGD][A-Z0-9]{2,}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
_PG_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?$")


def _pg_interval(value: Any) -> Any:
    """A PostgreSQL time setting as PGOPTIONS and SET take it: 5s, 100ms, 2min, 1h, or a bare
    number (milliseconds; 0 means no limit). YAML reads `0` and `1.5` as numbers, so numbers are
    accepted too; the result is always the compact text form (`2 s` -> `2s`), because it goes
    into a `-c name=value` option where a space would end the value."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 5s, 100ms, 2min or 0 (no limit)")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        value = format(value, "f").rstrip("0").rstrip(".")
    if isinstance(value, str):
        match = _PG_INTERVAL.match(value.strip())
        if match:
            return match.group(1) + (match.group(2) or "")
    raise ValueError("must be a duration such as 5s, 100ms, 2min or 0 (no limit)")


PgInterval = Annotated[str, BeforeValidator(_pg_interval)]
EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


def _passable(name: str) -> str:
    """A variable the app's subprocesses may receive: never the bot's Slack, GitHub or own settings."""
    if subprocess_env.forbidden(name):
        raise ValueError(subprocess_env.forbidden_reason(name))
    return name


# A variable name the app's subprocesses may be given (`url_env`, `app_env`).
AppVarName = Annotated[EnvVarName, AfterValidator(_passable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backups(_Strict):
    # A local directory, or any fsspec URL (s3://bucket/prefix, gs://..., file:///..., memory://...).
    dir: Path | str = Path("backups")
    keep: int = Field(3, ge=1)
    # Local scratch space for dumps bound for a URL (verified here, then uploaded in chunks);
    # default: the system's temporary directory.
    staging_dir: Path | None = None
    # Databases larger than this are dumped in directory format with `jobs` parallel workers.
    parallel_above_bytes: int = Field(1 << 30, ge=0)
    jobs: int | None = Field(None, ge=1, le=64)          # None: the number of CPUs
    # The ladder's top rung on every backup: "full" reads every byte back (pg_restore -f /dev/null);
    # "restore" also restores into a scratch database and compares row counts.
    verify: Literal["full", "restore"] = "full"
    # pg_dump --lock-wait-timeout, and the lock_timeout of a restore's own statements.
    lock_wait_timeout: PgInterval = "30s"

    @field_validator("dir", mode="before")
    @classmethod
    def _directory_or_url(cls, value: Any) -> Any:
        if isinstance(value, str) and "://" not in value:
            return Path(value)
        if isinstance(value, str) and not re.match(r"^[a-z][a-z0-9+.-]*://", value):
            raise ValueError("must be a directory or a URL such as s3://bucket/prefix")
        return value

    @property
    def is_url(self) -> bool:
        return isinstance(self.dir, str)


class Approvals(_Strict):
    approvers: list[SlackUserOrGroup] = []
    # None: two approvals on an environment marked `production: true`, else one (Environment.required_approvals)
    required: int | None = Field(None, ge=1, le=10)
    allow_self_approval: bool = False
    expire_minutes: int = Field(30, ge=1)
    require_backup_within_minutes: int = Field(60, ge=1)


# Who may do an action from Slack (issue 13 §2): "everyone" in the workspace, the environment's
# "approvers" (approvals.approvers), or a list of user (U…, W…) and user-group (S…) IDs ([] is nobody).
Who = Literal["everyone", "approvers"] | list[SlackUserOrGroup]


class Permissions(_Strict):
    """Who may do what from Slack on one environment; runbook.authz decides with it. What acts
    without an approval defaults to the approvers; asking for what still needs an approval (run,
    rollback, restore) and the owner escalation default to everyone. Read-only commands are not
    listed: everyone may. The CLI is trusted (it has the configuration and the database already)."""

    watch_off: Who = "approvers"        # `/migrate watch off`: silences alerting
    escalate_2: Who = "everyone"        # `/migrate escalate 2`: tags the owner
    escalate_3: Who = "approvers"       # `/migrate escalate 3`: @here and the pause hook
    backup: Who = "approvers"           # `/migrate backup`: retention may delete older backups
    ack_risk: Who = "approvers"         # `/migrate ack-risk`: clears a HIGH risk rating
    gate_override: Who = "approvers"    # overriding a migrate/rollback/restore guard
    run: Who = "everyone"               # asking; the approval decides
    rollback: Who = "everyone"
    restore: Who = "everyone"


class Thresholds(_Strict):
    long_query_seconds: float = Field(300, gt=0)
    lock_wait_seconds: float = Field(30, gt=0)
    idle_in_transaction_seconds: float = Field(300, gt=0)


class Watch(_Strict):
    """The scheduled watch of one environment (issue 5): how often, and how alerts settle."""

    every_seconds: int = Field(60, ge=5, le=86400)
    # A run may start this late (thread pool busy, GC pause) and still count; later it is skipped.
    misfire_grace_seconds: int = Field(30, ge=1, le=3600)
    # A condition must stay gone this long before its alert is marked resolved (damps flapping).
    resolve_after_seconds: float = Field(60, ge=0, le=86400)
    # A condition back within this long after its alert resolved re-opens the same message.
    reopen_within_seconds: float = Field(900, ge=0, le=7 * 86400)
    # The monitor connection's own limits: it must never queue behind a lock itself.
    statement_timeout: PgInterval = "2s"
    lock_timeout: PgInterval = "100ms"
    # How long one poll may read the target once connected (connect_timeout_seconds covers the
    # connection itself). statement_timeout is enforced by the server, which never sees a query
    # lost in a partition: past this deadline the bot abandons the connection and the poll
    # becomes a "cannot read" alert. Default: half the interval, at most 15 s.
    poll_deadline_seconds: float | None = Field(None, gt=0, le=3600)

    @property
    def poll_deadline(self) -> float:
        if self.poll_deadline_seconds is not None:
            return self.poll_deadline_seconds
        return min(15.0, self.every_seconds / 2)


class Migration(_Strict):
    lock_timeout: PgInterval = "5s"
    statement_timeout: PgInterval = "0"
    retries: int = Field(3, ge=0, le=20)
    step_by_step: bool = False
    # First pause before a lock-timeout retry; doubled each time (capped at 60 s), with jitter.
    retry_backoff_seconds: float = Field(2.0, ge=0, le=600)
    # Hard limit for one alembic subprocess: then its backend is cancelled and its process group killed.
    timeout_seconds: float = Field(3600, gt=0, le=7 * 86400)


class Validation(_Strict):
    tables: list[str] = []
    required_columns: dict[str, list[str]] = {}
    smoke_command: list[str] | None = Field(None, min_length=1)
    smoke_timeout_seconds: float = Field(300, gt=0, le=86400)
    health_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s<>|]+$", max_length=2000)] | None = None
    health_timeout_seconds: float = Field(10, gt=0, le=600)
    # The validation queries' own limits: a count(*) must never queue behind a lock.
    statement_timeout: PgInterval = "60s"
    lock_timeout: PgInterval = "1s"


# -- issue 7: the risk review of pending revisions, and the promotion gate ----------------------

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "kB": 1 << 10, "KB": 1 << 10, "KiB": 1 << 10, "MB": 1 << 20, "MiB": 1 << 20,
               "GB": 1 << 30, "GiB": 1 << 30, "TB": 1 << 40, "TiB": 1 << 40}


def _byte_size(value: Any) -> Any:
    """100MB, 2 GB, 512kB or a number of bytes; binary units, as every size the bot shows."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 100MB, 2GB or a number of bytes")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError("must be a size such as 100MB, 2GB or a number of bytes")


ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(ge=0)]
SquawkRule = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{1,60}$")]


class Review(_Strict):
    """The risk review (issue 7): each pending revision's SQL linted by squawk, every finding
    weighed against the live table it touches."""

    enabled: bool = True
    # A size-dependent finding (a build, scan or rewrite under a lock) on a table at least this
    # large is rated high; at least medium_table_bytes, medium; smaller, low.
    large_table_bytes: ByteSize = 100 << 20
    medium_table_bytes: ByteSize = 10 << 20
    # squawk rules not reported at all. The bot sets lock_timeout and statement_timeout itself
    # (PGOPTIONS, design rule 14), which squawk cannot see in the SQL (reference/postgres.md §3.1).
    exclude_rules: list[SquawkRule] = Field(
        default_factory=lambda: ["require-lock-timeout", "require-statement-timeout"], max_length=60)
    # The squawk command (argv, no shell); default: the one installed with runbook-bot, else PATH.
    squawk: list[Annotated[str, StringConstraints(min_length=1, max_length=1000)]] | None = Field(
        None, min_length=1, max_length=20)
    squawk_timeout_seconds: float = Field(30, gt=0, le=600)

    @model_validator(mode="after")
    def _ordered(self) -> "Review":
        if self.medium_table_bytes > self.large_table_bytes:
            raise ValueError("medium_table_bytes must not be larger than large_table_bytes")
        return self


class Rehearsal(_Strict):
    """Issue 16: the pending range rehearsed on a restored copy before anyone approves it."""

    # The server that holds the copy (a postgresql:// URL; its database is only used to connect);
    # default: the target's own server.
    server_url: SecretStr | None = None
    # A migrate or rollback request without a passed rehearsal of the same range is refused.
    required: bool = False
    # The copy's restore and its own queries; the migration keeps migration.statement_timeout.
    statement_timeout: PgInterval = "30min"
    # Refused when the server's free disk (measurable when it is on this host) is below the copy's
    # size plus this.
    disk_margin: ByteSize = 512 << 20
    # How often the migrator's locks are sampled from pg_locks.
    lock_sample_ms: int = Field(20, ge=5, le=50)

    @field_validator("server_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(r"^postgres(ql)?(\+psycopg)?://", value.get_secret_value()):
            raise ValueError("must be a postgresql:// URL")
        return value


class Environment(_Strict):
    database_url: SecretStr
    app_dir: Path
    alembic: list[str] = Field(default_factory=lambda: ["alembic"], min_length=1)
    url_env: AppVarName = "DATABASE_URL"
    pg_bin_dir: Path | None = None
    production: bool = False
    connect_timeout_seconds: float = Field(5, gt=0, le=120)
    backups: Backups = Backups()
    approvals: Approvals = Approvals()
    thresholds: Thresholds = Thresholds()
    watch: Watch = Watch()
    migration: Migration = Migration()
    validation: Validation = Validation()
    review: Review = Review()
    permissions: Permissions = Permissions()
    rehearsal: Rehearsal = Rehearsal()
    # Migrate only to revisions applied and validated by the bot on this environment first.
    promote_from: EnvName | None = None
    # More variables the app's own code needs from the bot's environment (its Alembic and smoke
    # command get nothing else but the allowlist of runbook.subprocess_env); never a Slack,
    # GitHub or RUNBOOK_BOT_* one.
    app_env: list[AppVarName] = Field(default_factory=list, max_length=100)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        if not re.match(r"^postgres(ql)?(\+psycopg)?://", value.get_secret_value()):
            raise ValueError("must be a postgresql:// URL")
        return value

    @property
    def required_approvals(self) -> int:
        """approvals.required when configured; otherwise two on production, one elsewhere."""
        if self.approvals.required is not None:
            return self.approvals.required
        return 2 if self.production else 1

    @property
    def dsn(self) -> str:
        """The libpq form of database_url (drops a SQLAlchemy '+psycopg' driver suffix)."""
        return libpq_url(self.database_url.get_secret_value())

    @property
    def rehearsal_dsn(self) -> str:
        """The libpq form of rehearsal.server_url: where rehearsal copies are made (default: the target's
        own server, reached as the target is)."""
        if self.rehearsal.server_url is None:
            return self.dsn
        return libpq_url(self.rehearsal.server_url.get_secret_value())


class Slack(_Strict):
    channel: SlackChannel
    # Where `/migrate` may be typed: channel IDs and `dm` (direct messages with the bot). Default:
    # `channel` and DMs. Elsewhere a command is refused with one line saying where to go.
    command_channels: list[SlackChannel | Literal["dm"]] | None = None

    @property
    def allowed_command_channels(self) -> list[str]:
        return list(self.command_channels) if self.command_channels is not None else [self.channel, "dm"]


class Owner(_Strict):
    slack: SlackUserOrGroup | None = None
    github: str | None = None


AlertKind = Literal["lock_wait", "long_query", "idle_in_transaction", "prepared_transaction", "unreachable"]
ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s<>|]+$", max_length=2000)]


# -- issue 6: escalation levels (runbook §7.2), the pause hook, GitHub issues, incident summaries --

LevelNumber = Literal[1, 2, 3]


def _notify_target(value: str) -> str:
    if value in ("owner", "here") or re.fullmatch(r"[UWS][A-Z0-9]{2,}", value):
        return value
    raise ValueError("must be owner, here, or a Slack user or user group ID (U…, S…)")


# Who a level tags: the configured owner, everyone active in the channel, or a user / user group ID.
NotifyTarget = Annotated[str, AfterValidator(_notify_target)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=300)]


class EscalationLevel(_Strict):
    """One level of runbook §7.2 as data: what it is for, what to do, whom it tags, what it triggers."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    when: list[ShortText] = Field(default_factory=list, max_length=10)   # shown with the level
    do: list[ShortText] = Field(default_factory=list, max_length=10)     # the instructions, in order
    notify: list[NotifyTarget] = Field(default_factory=list, max_length=10)
    summary: bool = False        # the §7.3 incident summary goes with it (message and Markdown file)
    github_issue: bool = False   # opens an issue when escalation.github is configured
    pause_hook: bool = False     # runs escalation.pause_hook


# Mirrors runbook §7.2; a configured level is merged key by key over its default.
DEFAULT_ESCALATION_LEVELS: dict[int, dict[str, Any]] = {
    1: {"name": "Self-service",
        "when": ["standard operations", "a failed step the runbook covers"],
        "do": ["Follow the runbook section that fits the current state (below)",
               "Check the migration guidelines for best practices",
               "Review the migration log and error messages"]},
    2: {"name": "Owner",
        "when": ["a rollback or restore failed", "data integrity issues persist",
                 "the migration blocks a production deployment"],
        "do": ["The owner takes over: read the incident summary",
               "Do not retry the migration, rollback or restore until the owner answers here"],
        "notify": ["owner"], "summary": True, "github_issue": True},
    3: {"name": "Emergency",
        "when": ["a service outage affecting users", "data loss or corruption confirmed"],
        "do": ["Pause the application: stop its writes to the database",
               "Preserve logs: the migration log, the application's and PostgreSQL's logs",
               "Change nothing else until the owner answers here"],
        "notify": ["owner", "here"], "summary": True, "github_issue": True, "pause_hook": True},
}


class PauseHook(_Strict):
    """A command that pauses the application (level 3): an argument list, run without a shell."""

    argv: list[Annotated[str, StringConstraints(max_length=1000)]] = Field(min_length=1, max_length=100)
    timeout_seconds: float = Field(60, gt=0, le=3600)


class GitHubIssues(_Strict):
    """Levels with github_issue open an issue in `repo`; the token is read from `token_env` at use."""

    repo: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")]
    token_env: EnvVarName = "GITHUB_TOKEN"
    api_url: HttpUrl = "https://api.github.com"     # GitHub Enterprise: https://HOST/api/v3
    labels: list[Annotated[str, StringConstraints(min_length=1, max_length=50)]] = Field(default_factory=list,
                                                                                          max_length=10)
    timeout_seconds: float = Field(10, gt=0, le=120)


class IncidentSummary(_Strict):
    # How many of the last lines of a run's log file the summary quotes.
    log_lines: int = Field(40, ge=0, le=500)


class Escalation(_Strict):
    owner: Owner = Owner()
    links: dict[str, str] = {}
    dashboards: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9 _.-]{1,40}$")], HttpUrl] = {}
    # An alert still open this long tags the owner in its thread, once.
    escalate_after_seconds: float = Field(600, gt=0, le=7 * 86400)
    # Which alert kinds escalate at all.
    escalate_kinds: list[AlertKind] = Field(default_factory=lambda: list(ALERT_KINDS))
    levels: dict[LevelNumber, EscalationLevel] = Field(
        default_factory=lambda: {n: EscalationLevel(**v) for n, v in DEFAULT_ESCALATION_LEVELS.items()})
    pause_hook: PauseHook | None = None
    github: GitHubIssues | None = None
    incident: IncidentSummary = IncidentSummary()

    @field_validator("levels", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        """Each configured level is merged over its default, so `levels: {3: {notify: [owner]}}` is enough."""
        if not isinstance(value, dict):
            return value
        merged: dict[Any, Any] = {n: dict(v) for n, v in DEFAULT_ESCALATION_LEVELS.items()}
        for key, level in value.items():
            number = int(key) if isinstance(key, str) and key.isdigit() else key
            if number in merged and isinstance(level, dict):
                merged[number] = {**merged[number], **level}
            else:
                merged[number] = level       # an unknown level or a malformed one: validation names it
        return merged

    def level(self, number: int) -> EscalationLevel:
        return self.levels[number]  # type: ignore[index]


class Settings(_Strict):
    state_url: str = "sqlite:///runbook-bot.db"
    slack: Slack | None = None
    environments: dict[EnvName, Environment] = Field(min_length=1)
    escalation: Escalation = Escalation()
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _state_url_scheme(self) -> "Settings":
        if not re.match(r"^(sqlite|postgresql(\+psycopg)?)://", self.state_url):
            raise ValueError("state_url: must be sqlite:///FILE or postgresql://...")
        return self

    @model_validator(mode="after")
    def _promotion_sources(self) -> "Settings":
        """promote_from names another configured environment, and the chain never comes back."""
        for name, env in self.environments.items():
            source = env.promote_from
            if source is None:
                continue
            where = f"environments.{name}.promote_from"
            if source == name:
                raise ValueError(f"{where}: an environment cannot be promoted from itself")
            if source not in self.environments:
                raise ValueError(f"{where}: '{source}' is not a configured environment (configured: "
                                 + ", ".join(sorted(self.environments)) + ")")
            seen = [name]
            while source is not None:
                if source in seen:
                    raise ValueError(f"{where}: promotion cycle {' -> '.join([*seen, source])}")
                seen.append(source)
                source = self.environments[source].promote_from
        return self

    @model_validator(mode="after")
    def _github_token_withheld(self) -> "Settings":
        """The GitHub token's variable, whatever its name, never reaches the app's subprocesses."""
        github = self.escalation.github
        if github is None:
            return self
        for name, env in self.environments.items():
            if github.token_env in (*env.app_env, env.url_env):
                raise ValueError(f"environments.{name}.app_env: {github.token_env} holds the GitHub token "
                                 "(escalation.github.token_env) and may never be passed to the app's subprocesses")
        return self

    def environment(self, name: str | None) -> tuple[str, Environment]:
        """Resolve an environment name; it may be omitted when exactly one exists."""
        if name is None:
            if len(self.environments) == 1:
                return next(iter(self.environments.items()))
            raise ConfigError(
                "several environments are configured ("
                + ", ".join(sorted(self.environments))
                + "): name one"
            )
        if name not in self.environments:
            raise ConfigError(
                f"unknown environment '{name}'; configured: " + ", ".join(sorted(self.environments))
            )
        return name, self.environments[name]


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    where = _location(error["loc"])
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "value_error" and not error["loc"]:      # a check across keys names them itself
        return str(error["ctx"]["error"])
    if kind == "string_pattern_mismatch":
        return f"{where}: not a valid value here (expected pattern {error['ctx']['pattern']})"
    return f"{where}: {error['msg']}"


def parse_settings(text: str, *, source: Path, environ: dict[str, str] | None = None) -> Settings:
    raw = raw_settings(text, source=source, environ=environ)
    try:
        return Settings.model_validate({**raw, "source": source})
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)
        more = f" (and {len(first) - 1} more problem{'s' if len(first) > 2 else ''})" if len(first) > 1 else ""
        raise ConfigError(f"{source}: {_describe(first[0])}{more}") from None


def load_settings(explicit: str | None = None) -> Settings:
    path = config_path(explicit)
    return parse_settings(read_config(path), source=path)
