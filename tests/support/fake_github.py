"""A loopback stand-in for GitHub's REST API: `POST /repos/{owner}/{repo}/issues` only.

GitHub is outside, like Slack: the tests point `escalation.github.api_url` here (127.0.0.1, port 0)
and read back what the bot sent. `fail_next(status, message)` answers the next request with an error.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class IssueRequest:
    path: str
    headers: dict[str, str]       # lower-case names
    body: dict[str, Any]


class FakeGitHub:
    def __init__(self) -> None:
        self.requests: list[IssueRequest] = []
        self._faults: list[tuple[int, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                match = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues", self.path)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                with fake._lock:
                    fake.requests.append(IssueRequest(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body))
                    number = len(fake.requests)
                    fault = fake._faults.pop(0) if fake._faults else None
                if fault is not None:
                    self._send(fault[0], {"message": fault[1]}, fault[2])
                elif match is None:
                    self._send(404, {"message": "Not Found"})
                else:
                    owner, repo = match.groups()
                    self._send(201, {"number": number, "html_url": f"https://github.example/{owner}/{repo}/issues/{number}",
                                     "title": body.get("title")})

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-github", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._faults.append((status, message, dict(headers or {})))

    def __enter__(self) -> "FakeGitHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
