"""The shape design.md §1 promises, checked on the source: the engine never imports Slack or the bot,
and the terminal renderer never loads a Slack module (the CLI's output stays Slack-free)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_engine_never_imports_the_bot_or_slack():
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in _imports(path)
                                                     if n.split(".")[0] in ("bot", "slack_sdk", "slack_bolt"))
                 for path in (ROOT / "runbook").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_terminal_renderer_loads_no_slack_module():
    code = ("import sys, bot.text\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('slack_sdk', 'slack_bolt', 'bot.')) "
            "and m != 'bot.text')\n"
            "print(','.join(loaded))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
