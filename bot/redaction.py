"""The bot's redactor: every secret it knows (the environments' database passwords, the tokens it was
given) removed from texts, trees and messages before they leave for Slack, a log or a file."""
from __future__ import annotations

from typing import Any

from bot import blocks
from runbook.config import Settings


class Redactor:
    """Removes every secret the bot knows from texts, trees and messages before they leave."""

    def __init__(self, settings: Settings, extra_secrets: tuple[str, ...] = ()):
        from runbook.target import password_of

        secrets = [password_of(dsn) for env in settings.environments.values() for dsn in (env.dsn, env.rehearsal_dsn)]
        secrets += [s for s in extra_secrets if s]
        self.secrets = tuple(s for s in secrets if s and len(s) >= 3)

    def __call__(self, text: str) -> str:
        from runbook.target import redact

        return redact(text, *self.secrets)

    def tree(self, node: Any) -> Any:
        if isinstance(node, str):
            return self(node)
        if isinstance(node, dict):
            return {k: self.tree(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [self.tree(v) for v in node]
        return node

    def message(self, message: "blocks.Message") -> "blocks.Message":
        return blocks.Message(
            text=self(message.text),
            blocks=self.tree(message.blocks),
            files=[blocks.FileUpload(self(f.title), f.filename, self(f.content)) for f in message.files],
        )

    def safe_exc_info(self, exc: BaseException) -> bool:
        """Tracebacks go to the log only when no secret appears in them."""
        import traceback

        text = "".join(traceback.format_exception(exc))
        return self(text) == text


__all__ = ["Redactor"]
