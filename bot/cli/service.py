"""`doctor`, `manifest` and `serve`: the bot itself, its Slack app and its prerequisites."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.config import Settings

from bot.cli.common import EXIT_ERROR, EXIT_OK, emit


def cmd_doctor(settings: Settings, args) -> int:
    """`doctor [--env E] [--json]`: the engine's checks (runbook.doctor), then Slack's (bot.doctor).
    Reads only: it records no event and creates nothing, so it can run before anything else."""
    from bot.doctor import slack_checks
    from runbook import doctor

    environments = [settings.environment(args.env)[0]] if args.env else None
    report = doctor.diagnose(settings, environments)
    report.checks += slack_checks(settings)
    emit(args, lambda: doctor.report_to_json(report), lambda: "\n".join(c.line() for c in report.checks))
    return report.exit_code


def cmd_manifest(args) -> int:
    from bot.manifest import ManifestError, generate

    try:
        print(generate(socket=args.socket, url=args.url), end="")
    except ManifestError as exc:
        print(f"runbook-bot: manifest: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_serve(settings: Settings, args) -> int:
    from bot.server import serve

    return serve(settings, mode="http" if args.http else "socket", host=args.host, port=args.port)


__all__ = ["cmd_doctor", "cmd_manifest", "cmd_serve"]
