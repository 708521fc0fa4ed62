"""The shape design.md §1 promises, checked on the source: the engine never imports Slack or the bot,
and the terminal renderer never loads a Slack module (the CLI's output stays Slack-free)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path, *, top_level: bool = False) -> set[str]:
    """The absolute imports of a module; `top_level`: only those run when it is imported (not inside
    functions, which import lazily)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in (tree.body if top_level else ast.walk(tree)):
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


def _python_output(code: str, timeout: float = 60) -> str:
    """What `code` prints, run in a fresh interpreter from the checkout (a module set as a new process has it)."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_terminal_renderer_loads_no_slack_module():
    code = ("import sys, bot.text\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('slack_sdk', 'slack_bolt', 'bot.')) "
            "and m != 'bot.text')\n"
            "print(','.join(loaded))")
    assert _python_output(code) == ""

def test_the_revisions_package_loads_only_the_standard_library():
    """A cold `runbook-bot precheck` imports runbook.revisions first, to start the app's Alembic render
    before pydantic, psycopg or YAML load (runbook/prerender.py, docs/performance.md): whatever it
    imports delays the render by its load time."""
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            "import runbook.prerender\n"
            "print(','.join(sorted({m.split('.')[0] for m in set(sys.modules) - before}\n"
            "                      - set(sys.stdlib_module_names))))")
    assert _python_output(code) == "runbook"



SPLIT_PACKAGES = ("runbook.migrate", "runbook.backup", "runbook.review", "runbook.incident", "runbook.revisions",
                  "bot.render", "bot.cli", "bot.flows")


def _modules_of(package: str) -> list[str]:
    folder = ROOT.joinpath(*package.split("."))
    return sorted(f"{package}.{p.stem}" for p in folder.glob("*.py")
                  if p.stem not in ("__init__", "__main__"))   # __main__ runs the command line


def test_each_module_of_the_split_packages_imports_alone():
    """An import cycle inside a package shows only when one of its modules is imported first: import each
    one first, in a fresh set of runbook and bot modules (third-party ones stay loaded, to keep this quick)."""
    modules = [m for package in SPLIT_PACKAGES for m in _modules_of(package)]
    code = ("import importlib, sys, traceback\n"
            "failed = []\n"
            f"for name in {modules!r}:\n"
            "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('runbook', 'bot')]:\n"
            "        del sys.modules[loaded]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception:\n"
            "        failed.append(name + ': ' + traceback.format_exc(limit=1).splitlines()[-1])\n"
            "print('\\n'.join(failed))")
    assert len(modules) > 5 and _python_output(code, timeout=120) == ""


def test_the_split_packages_modules_import_each_other_without_a_cycle():
    """Module-level imports among a package's modules form no cycle, and none imports its own package
    (that would run its __init__, which imports them all)."""
    for package in SPLIT_PACKAGES:
        graph = {name: {n for n in _imports(ROOT.joinpath(*name.split(".")).with_suffix(".py"), top_level=True)
                        if n.startswith(package)}
                 for name in _modules_of(package)}
        assert not [name for name, deps in graph.items() if package in deps], package
        done: set[str] = set()

        def visit(name: str, path: tuple[str, ...]) -> None:
            assert name not in path, " -> ".join((*path, name))
            if name not in done:
                for dep in graph.get(name, ()):
                    visit(dep, (*path, name))
                done.add(name)

        for name in graph:
            visit(name, ())


def test_the_renderers_build_on_core_and_the_risk_review_does_not_reach_back():
    """bot.render.core imports no renderer; the precheck renderer shows the risk review (bot/review_blocks.py),
    so review_blocks may import only core: importing the precheck renderer or bot.blocks (which re-exports
    it) would close the cycle blocks <-> review_blocks that the split removed."""
    core = _imports(ROOT / "bot" / "render" / "core.py")
    assert not [n for n in core if n.startswith("bot.")], core
    review = {n for n in _imports(ROOT / "bot" / "review_blocks.py") if n.startswith("bot.")}
    assert review == {"bot.render.core"}
    assert "bot.review_blocks" in _imports(ROOT / "bot" / "render" / "precheck.py", top_level=True)


def test_no_two_bot_modules_import_each_other():
    """Issue 12 §1: flows <-> migrations <-> escalate and blocks <-> review_blocks imported each other
    (inside functions, to dodge the cycle). Every import counts here, at any depth of the file."""
    def bot_imports(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("bot."):
                    found.add(node.module)
                elif node.module == "bot":
                    found.update(f"bot.{alias.name}" for alias in node.names)
        return found

    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): bot_imports(p)
               for p in (ROOT / "bot").rglob("*.py")}
    assert {"bot.flows", "bot.cli.entry", "bot.render.core"} <= set(modules)
    pairs = sorted({tuple(sorted((a, b))) for a, deps in modules.items() for b in deps if a in modules.get(b, ())})
    assert pairs == []


def _web_api_calls(path: Path) -> set[str]:
    """The Slack Web API client methods a module calls (`x.chat_postMessage(...)`, `x.api_call(...)`)."""
    from slack_sdk import WebClient

    methods = {n for n, v in vars(WebClient).items() if callable(v) and not n.startswith("_")} | {"api_call"}
    return {node.func.attr for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods}


def test_only_the_gateway_calls_slacks_web_api():
    """Design rule 19: every Web API call goes through bot/gateway.py (redact -> validate -> call -> handle the
    error -> log); bot/localslack.py is the stand-in that answers them."""
    gateway = _web_api_calls(ROOT / "bot" / "gateway.py")
    assert {"chat_postMessage", "chat_update", "chat_postEphemeral", "usergroups_users_list", "auth_test"} <= gateway
    offenders = {str(p.relative_to(ROOT)): sorted(calls) for p in (ROOT / "bot").rglob("*.py")
                 if p.name not in ("gateway.py", "localslack.py") and (calls := _web_api_calls(p))}
    assert offenders == {}
