"""DSN texts: mask passwords, pull the password out, label a database; no driver is imported."""
from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_PASSWORD = re.compile(r"(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]*:)([^@\s]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str, *secrets: str) -> str:
    """Mask passwords in any URL or key=value DSN in `text`, and every given secret verbatim."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + ("***" if m.group(2) else "") + m.group(3), text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def password_of(dsn: str) -> str:
    """The password inside a URL DSN, or '' (used to scrub texts that echo it back)."""
    try:
        return urlsplit(dsn).password or ""
    except ValueError:
        return ""


def describe(dsn: str) -> str:
    """host:port/dbname for messages, never the credentials."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "the configured database"
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    dbname = parts.path.lstrip("/") or "(default)"
    return f"{host}{port}/{dbname}"


def without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))


def libpq_url(url: str) -> str:
    """The libpq form of a database URL: a SQLAlchemy '+psycopg' driver suffix dropped."""
    return re.sub(r"^postgres(ql)?\+psycopg://", "postgresql://", url)
