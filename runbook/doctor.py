"""`runbook-bot doctor`: will this configuration work? Every prerequisite checked once, read-only.

One Check per prerequisite, each ok / warn / fail with what to do: the target database within
its connect timeout, the role's privileges, the client tools against the server's version, the
app's Alembic run as the bot runs it, room for a backup, the state database. Nothing is written
anywhere (no state migration, no backups directory created, no event recorded): the doctor may
run before the first real command. The Slack checks live in bot/doctor.py (the engine never
talks to Slack); the CLI composes both.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from runbook.config import Environment, Settings
from runbook.pgtools import ToolError, find_tool, select_tools, server_major
from runbook.precheck import _free_bytes, project_of, target_of
from runbook.revisions import RevisionError
from runbook.target import TargetError
from runbook.units import human_size

Status = Literal["ok", "warn", "fail"]

# `alembic heads` only reads the scripts; an app whose env.py imports the whole app may take a while.
ALEMBIC_TIMEOUT_SECONDS = 120
# Tables named in a failing ownership line; the rest is counted.
NAMED_TABLES = 5


@dataclass(frozen=True)
class Check:
    name: str                        # "database", "privileges", "client tools", ...
    status: Status
    detail: str                      # what was found, one line, never a secret
    fix: str = ""                    # what to do, for warn and fail
    environment: str | None = None   # None: not about one environment (configuration, state, Slack)

    def line(self) -> str:
        where = f"{self.environment}: " if self.environment else ""
        return f"{self.status:<4}  {self.name}: {where}{self.detail}" + (f" -> {self.fix}" if self.fix else "")


@dataclass
class DoctorReport:
    config: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def exit_code(self) -> int:
        """0 all ok (warnings allowed), 1 a failure (design §2: 2 is left to a bad configuration)."""
        return 1 if self.failed else 0


def report_to_json(report: DoctorReport) -> dict:
    return {"config": report.config, "ok": not report.failed, "exit": report.exit_code,
            "checks": [asdict(c) for c in report.checks]}


def diagnose(settings: Settings, environments: list[str] | None = None) -> DoctorReport:
    """Every engine check, for the named environments (default: all of them)."""
    names = environments or sorted(settings.environments)
    report = DoctorReport(config=str(settings.source or ""))
    report.checks.append(Check("configuration", "ok", f"{settings.source or 'the configuration'} loads: "
                               f"environment{'s' if len(settings.environments) > 1 else ''} "
                               + ", ".join(sorted(settings.environments))))
    for name in names:
        report.checks += environment_checks(name, settings.environments[name])
    report.checks.append(state_check(settings.state_url))
    return report


# -- one environment -------------------------------------------------------------------------

@dataclass
class _Server:
    version: str
    version_num: int
    size_bytes: int


def environment_checks(name: str, env: Environment) -> list[Check]:
    checks: list[Check] = []
    server, database = _database_check(name, env)
    checks.append(database)
    if server is not None:
        checks += _privilege_checks(name, env)
    checks.append(_tools_check(name, env, server))
    checks.append(_alembic_check(name, env))
    checks.append(_backups_check(name, env, server))
    return checks


def _database_check(name: str, env: Environment) -> tuple[_Server | None, Check]:
    target = target_of(env)
    started = time.monotonic()
    try:
        with target.connect("doctor") as conn:
            row = conn.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                               "pg_database_size(current_database())").fetchone()
    except TargetError as exc:
        return None, Check("database", "fail", str(exc), _connect_fix(str(exc), env), name)
    ms = (time.monotonic() - started) * 1000
    server = _Server(version=str(row[0]).split()[0], version_num=int(row[1]), size_bytes=int(row[2]))
    return server, Check("database", "ok", f"{target.label} answered in {ms:.0f} ms (PostgreSQL {server.version}, "
                                           f"{human_size(server.size_bytes)})", environment=name)


def _connect_fix(error: str, env: Environment) -> str:
    lowered = error.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return "check the user and password in database_url (or the variable it reads)"
    if "does not exist" in lowered:
        return "check the user and database names in database_url"
    if "timeout" in lowered or "timed out" in lowered:
        return (f"the server did not answer within connect_timeout_seconds ({env.connect_timeout_seconds:g}): "
                "check host, port and firewall")
    return "check database_url (host, port, user, password, database) and that the server is running"


# pg_has_role(..., 'USAGE') follows role inheritance; pg_monitor includes pg_read_all_stats.
PRIVILEGES_SQL = """
SELECT current_user,
       r.rolsuper,
       r.rolcreatedb,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS read_all_stats
  FROM pg_roles r WHERE r.rolname = current_user
"""

# Every user table a full restore (pg_restore --clean) drops and recreates, or a table restore
# replaces: only its owner (or a member of the owning role) may.
NOT_OWNED_SQL = """
SELECT pg_get_userbyid(c.relowner) AS owner, n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
   AND NOT pg_has_role(current_user, c.relowner, 'MEMBER')
 ORDER BY 1, 2, 3
"""


def _privilege_checks(name: str, env: Environment) -> list[Check]:
    target = target_of(env)
    try:
        with target.connect("doctor") as conn:
            user, superuser, createdb, read_all_stats = conn.execute(PRIVILEGES_SQL).fetchone()
            not_owned = [] if superuser else conn.execute(NOT_OWNED_SQL).fetchall()
    except TargetError as exc:
        return [Check("privileges", "fail", str(exc), "check the role's access to the catalogue", name)]
    role = _ident(user)
    if superuser:
        return [Check("privileges", "ok", f"role {user} is a superuser: it sees every session, may create the "
                      "scratch databases and owns every table", environment=name)]
    checks = []
    if read_all_stats:
        checks.append(Check("privileges: other sessions", "ok", f"role {user} sees other roles' queries "
                            "(pg_read_all_stats)", environment=name))
    else:
        checks.append(Check("privileges: other sessions", "fail",
                            f"role {user} cannot see other roles' queries: the no-go gate and the watch would "
                            "miss their locks and long queries", f"GRANT pg_monitor TO {role};", name))
    if createdb:
        checks.append(Check("privileges: CREATEDB", "ok", f"role {user} may create the scratch databases of "
                            "restore verification and rehearsal", environment=name))
    else:
        needed = env.backups.verify == "restore"
        checks.append(Check("privileges: CREATEDB", "fail" if needed else "warn",
                            f"role {user} cannot create databases: "
                            + ("backups.verify is restore, which restores every backup into a scratch database"
                               if needed else "`backup --verify restore` and rehearsals are refused"),
                            f"ALTER ROLE {role} CREATEDB;", name))
    if not not_owned:
        checks.append(Check("privileges: ownership", "ok", f"role {user} owns every table a restore replaces",
                            environment=name))
    else:
        owners = sorted({owner for owner, _schema, _table in not_owned})
        tables = [f"{schema}.{table}" if schema != "public" else table for _owner, schema, table in not_owned]
        shown = ", ".join(tables[:NAMED_TABLES]) + (f" (+{len(tables) - NAMED_TABLES} more)"
                                                    if len(tables) > NAMED_TABLES else "")
        checks.append(Check("privileges: ownership", "fail",
                            f"role {user} does not own {len(tables)} table{'s' if len(tables) != 1 else ''} a restore "
                            f"replaces ({shown}; owned by {', '.join(owners)})",
                            " ".join(f"GRANT {_ident(owner)} TO {role};" for owner in owners), name))
    return checks


def _ident(name: str) -> str:
    """A role name as SQL takes it: quoted unless it is a plain lower-case identifier."""
    plain = name.replace("_", "").isalnum() and name == name.lower() and not name[:1].isdigit()
    return name if plain else '"' + name.replace('"', '""') + '"'


def _tools_check(name: str, env: Environment, server: _Server | None) -> Check:
    where = f"pg_bin_dir {env.pg_bin_dir}" if env.pg_bin_dir else "PATH"
    try:
        if server is None:       # found and run, but not compared: the server did not answer
            found = [find_tool(tool, env.pg_bin_dir) for tool in ("pg_dump", "pg_restore", "psql")]
            return Check("client tools", "warn", ", ".join(f"{t.name} {t.version}" for t in found)
                         + f" from {where}; not compared with the server's version (no connection)",
                         "fix the database connection, then run doctor again", name)
        tools = select_tools(env.pg_bin_dir, server.version_num, server.version, name)
    except ToolError as exc:
        problem, advice = _problem_and_advice(str(exc))
        return Check("client tools", "fail", problem, advice or "install the PostgreSQL client tools"
                     + (f" {server_major(server.version_num)} or newer" if server else "")
                     + ", or set pg_bin_dir to their bin directory", name)
    return Check("client tools", "ok", f"pg_dump {tools.pg_dump.version}, pg_restore {tools.pg_restore.version}, "
                 f"psql {tools.psql.version} from {where}, server {tools.server_major}", environment=name)


def _problem_and_advice(message: str) -> tuple[str, str]:
    """ToolError says "<problem>: <what to do>"; the doctor shows them as detail and fix."""
    for marker in (": set ", ": point ", ": install "):
        if marker in message:
            problem, advice = message.split(marker, 1)
            return problem, marker[2:] + advice
    return message, ""


def _alembic_check(name: str, env: Environment) -> Check:
    project = project_of(env)
    if not env.app_dir.is_dir():
        return Check("app's alembic", "fail", f"app_dir {env.app_dir} does not exist",
                     "set app_dir to the directory that holds the app's alembic.ini", name)
    if not project.config_path.is_file():
        return Check("app's alembic", "fail", f"app_dir {env.app_dir} holds no {project.config_path.name}",
                     "set app_dir to the directory that holds the app's alembic.ini (or pass -c FILE in `alembic`)",
                     name)
    try:
        heads = project.alembic_heads(env.dsn, timeout=ALEMBIC_TIMEOUT_SECONDS)
    except RevisionError as exc:
        message = str(exc)
        if message.startswith("cannot run"):       # the command itself is missing: the error says what to do
            return Check("app's alembic", "fail", message.split(" (set the")[0],
                         f"install the app's Alembic where the bot runs, or set `alembic` of {name} to the command "
                         "that runs it (e.g. [poetry, run, alembic])", name)
        return Check("app's alembic", "fail", message,
                     f"run `{' '.join(env.alembic)} heads` in {env.app_dir} with {env.url_env} set, and fix what it "
                     "says (a missing package: install the app's dependencies; a missing variable: list it in "
                     "the environment's app_env)", name)
    shown = ", ".join(heads) if heads else "no revision yet"
    return Check("app's alembic", "ok", f"`{' '.join(env.alembic)} heads` runs in {env.app_dir}: {shown}",
                 environment=name)


def _backups_check(name: str, env: Environment, server: _Server | None) -> Check:
    if env.backups.is_url:
        local = Path(env.backups.staging_dir or os.environ.get("TMPDIR") or "/tmp")
        what = f"staging directory {local} (backups go to {env.backups.dir}; the bucket is not written to here)"
    else:
        local = Path(env.backups.dir)
        what = f"backups directory {local}"
    existing = _nearest_existing(local)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return Check("backups", "fail", f"{what} is not writable by this user"
                     + ("" if existing == local else f" ({existing} is the nearest existing directory)"),
                     f"create it and give this user write access (mkdir -p {local})", name)
    created = "" if existing == local else " (created at the first backup)"
    free = _free_bytes(local)
    if server is None or free is None:
        return Check("backups", "warn", f"{what} is writable{created}; free space not compared with the database "
                     "(" + ("no connection" if server is None else "cannot read free space") + ")",
                     "fix the database connection, then run doctor again" if server is None else "", name)
    size = server.size_bytes
    room = f"{human_size(free)} free, database {human_size(size)}"
    if free < size:
        return Check("backups", "fail", f"{what}: {room}", "free space or point backups.dir at a larger disk", name)
    if free < 2 * size:
        return Check("backups", "warn", f"{what}: {room} (less than twice the database)",
                     "keep an eye on the space: backups.keep backups are kept", name)
    return Check("backups", "ok", f"{what} is writable{created}: {room}", environment=name)


def _nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists: what decides whether it can be created."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


# -- the bot's own database ------------------------------------------------------------------

def state_check(state_url: str) -> Check:
    from runbook.dsn import redact
    from runbook.state.records import StateError
    from runbook.state.store import HEAD, Store

    shown = redact(state_url)
    if state_url.startswith("sqlite:///") and state_url != "sqlite:///:memory:":
        path = Path(state_url[len("sqlite:///"):])
        if not path.exists():       # opening it would create it: say what the first command will do
            existing = _nearest_existing(path.parent)
            writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
            return Check("state database", "warn" if writable else "fail",
                         f"{shown} does not exist yet" + ("; the bot's first command creates it" if writable
                                                          else f" and {existing} is not writable"),
                         "" if writable else f"make {existing} writable by this user, or set state_url")
    try:
        store = Store(state_url)
    except StateError as exc:
        return Check("state database", "fail", str(exc), "check state_url")
    try:
        revisions = store.schema_revisions()
    except StateError as exc:
        return Check("state database", "fail", str(exc), "check state_url and that its server is running")
    finally:
        store.close()
    if revisions == [HEAD]:
        return Check("state database", "ok", f"{shown} is reachable and migrated ({HEAD})")
    if revisions is None or (revisions and revisions[0] < HEAD):
        return Check("state database", "warn", f"{shown} is reachable, its schema is "
                     + ("not created yet" if revisions is None else f"at {', '.join(revisions)}, not {HEAD}"),
                     "the bot's next command or start migrates it")
    return Check("state database", "fail", f"{shown} is at {', '.join(revisions)}, newer than this bot ({HEAD})",
                 "run the bot's newer version, or point state_url at this version's database")
