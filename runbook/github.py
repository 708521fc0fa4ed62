"""GitHub issues for escalations (runbook §7.2: "Contact: @owner via GitHub issue").

One REST call, `POST {api_url}/repos/{repo}/issues`, with the standard library's urllib: the
token is read from the environment variable named in `escalation.github.token_env` at the
moment of use, sent only in the Authorization header, and removed from every text this module
returns or raises. `api_url` is configurable (GitHub Enterprise; the tests' loopback fake).

The title and body carry text from outside (the escalation's reason, the app's error output in
the incident summary), and GitHub notifies every `@user` and `@org/team` it finds there: they are
neutralised (`without_mentions`); the only real mentions are the ones asked for in `cc`.
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Mapping, Sequence

from runbook.config import GitHubIssues
from runbook.target import redact

# GitHub refuses bodies over 65536 characters; leave room for the truncation note.
MAX_BODY = 60000
API_VERSION = "2022-11-28"

# A GitHub mention is an @ not preceded by a letter, digit or _ and followed by a letter or digit
# (`@user`, `@org/team`). A zero-width space (U+200B) right after the @ breaks that syntax, so
# nobody is notified or linked, while the text reads the same. It is inserted as the character,
# not as `&#8203;` (Dependabot's and Renovate's way): an entity shows literally in code blocks (the
# summary quotes the run's log in one) and in titles, which are plain text. Backticks would show
# literally there too. The lookbehind is ASCII on purpose: GitHub treats `é@user` as a mention.
_MENTION = re.compile(r"(?<![A-Za-z0-9_])@(?=[A-Za-z0-9])")
ZERO_WIDTH_SPACE = "\u200b"


def without_mentions(text: str) -> str:
    """`text` with every GitHub @mention made inert (an invisible U+200B after the @)."""
    return _MENTION.sub("@" + ZERO_WIDTH_SPACE, text)


class GitHubError(Exception):
    """The issue could not be opened; one line, without the token."""


@dataclass(frozen=True)
class Issue:
    number: int
    url: str            # the issue's page (html_url)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header to wherever it points: refuse it instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: N802 (urllib's name)
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def token_of(config: GitHubIssues, environ: Mapping[str, str] | None = None) -> str:
    """The token, or '' when its variable is not set."""
    return (os.environ if environ is None else environ).get(config.token_env, "")


def open_issue(config: GitHubIssues, title: str, body: str, *, cc: Sequence[str] = (),
               extra_secrets: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Issue:
    """Open an issue in `config.repo`; GitHubError (one line) when it cannot. Mentions in `title`
    and `body` are neutralised; `cc` (GitHub users or org/team names) are mentioned on the first line."""
    token = token_of(config, environ)
    if not token:
        raise GitHubError(f"escalation.github: the environment variable {config.token_env} is not set, "
                          "so no issue was opened")
    secrets = (token, *extra_secrets)
    title, body = without_mentions(title), without_mentions(body)
    if cc:
        body = "cc " + " ".join(f"@{name.lstrip('@')}" for name in cc) + f"\n\n{body}"
    if len(body) > MAX_BODY:
        body = body[:MAX_BODY] + "\n\n… (cut: the full summary is in the Slack thread and `runbook-bot incident`)"
    payload = {"title": title[:250], "body": body}
    if config.labels:
        payload["labels"] = list(config.labels)
    request = urllib.request.Request(
        f"{config.api_url.rstrip('/')}/repos/{config.repo}/issues", method="POST",
        data=json.dumps(payload).encode("utf-8"),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                 "X-GitHub-Api-Version": API_VERSION, "Content-Type": "application/json",
                 "User-Agent": "runbook-bot"})
    try:
        with _OPENER.open(request, timeout=config.timeout_seconds) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise GitHubError(redact(f"GitHub refused the issue in {config.repo} (HTTP {exc.code}: "
                                 f"{_message_of(exc)})", *secrets)) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise GitHubError(redact(f"cannot reach GitHub at {config.api_url} ({reason})", *secrets)) from None
    except ValueError:
        raise GitHubError("GitHub answered with something that is not JSON; was an issue opened? "
                          f"Check {config.repo}") from None
    url, number = answer.get("html_url"), answer.get("number")
    if not isinstance(url, str) or not isinstance(number, int):
        raise GitHubError(f"GitHub's answer names no issue; check {config.repo}")
    return Issue(number, redact(url, *secrets))


def _message_of(exc: urllib.error.HTTPError) -> str:
    """GitHub's own one-line `message`, else the HTTP reason."""
    try:
        message = json.loads(exc.read() or b"{}").get("message")
    except (ValueError, AttributeError, OSError):
        message = None
    text = message if isinstance(message, str) and message else str(exc.reason)
    return " ".join(text.split())[:200]


__all__ = ["GitHubError", "Issue", "open_issue", "token_of", "without_mentions"]
