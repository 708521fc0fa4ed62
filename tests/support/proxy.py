"""A TCP proxy in front of PostgreSQL that can go silent: a network partition, on loopback.

    with SilentProxy.to(url) as proxy:     # url: the embedded server's (unix socket) or any TCP one
        bot_url = proxy.url_for(url)       # postgresql://…@127.0.0.1:<port>/<db>
        proxy.silence()                    # bytes stop flowing both ways; connections stay open
        proxy.resume()
        proxy.swallow_queries()            # connecting still works; every query is lost on the way

Silenced, a client's query neither fails nor answers, as when a host is black-holed: exactly the
case where a health check must not hang. Swallowing is the partition that strikes after the
handshake: the connection opens (connect_timeout is satisfied) and then the first query the
client sends, and everything after it on that connection, is dropped, so the server never sees
it and its statement_timeout never starts.
"""
from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import parse_qs, urlsplit, urlunsplit


class SilentProxy:
    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target                     # (host, port), or a unix socket path
        self._flowing = threading.Event()
        self._flowing.set()
        self._swallowing = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="silent-proxy", daemon=True).start()

    @classmethod
    def to(cls, url: str) -> "SilentProxy":
        parts = urlsplit(url)
        host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
        port = parts.port or 5432
        return cls(f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port))

    def url_for(self, url: str) -> str:
        """The same database and user, reached through this proxy."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else "postgres"
        return urlunsplit(("postgresql", f"{userinfo}@127.0.0.1:{self.port}", parts.path, "", ""))

    def silence(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()
        self._swallowing.clear()

    def swallow_queries(self) -> None:
        self._swallowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if isinstance(self.target, str):
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
            else:
                upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, _ClientStream()), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, stream: "_ClientStream | None" = None) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(0.1):      # silenced: hold the bytes, keep the connection
                    if self._closed.is_set():
                        return
                if stream is not None:
                    data = stream.passed(data, swallowing=self._swallowing.is_set())
                if data:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

    def __enter__(self) -> "SilentProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Untyped messages a client may send before its startup message (int32 length, int32 code).
_SSL_REQUEST, _GSSENC_REQUEST, _PROTOCOL_3 = 80877103, 80877104, 196608


class _ClientStream:
    """Splits what a PostgreSQL client sends into messages, to let the handshake through and drop
    everything from the first query on while swallowing (the password exchange, 'p', still passes)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.started = False        # past the startup message: typed messages from here on
        self.dropping = False

    def passed(self, data: bytes, *, swallowing: bool) -> bytes:
        self.buffer += data
        out = b""
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    break
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    break
                message, self.buffer = self.buffer[:length], self.buffer[length:]
                if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    self.started = code == _PROTOCOL_3 or self.started
            else:
                if len(self.buffer) < 5:
                    break
                length = struct.unpack("!i", self.buffer[1:5])[0] + 1
                if len(self.buffer) < length:
                    break
                message, self.buffer = self.buffer[:length], self.buffer[length:]
                if swallowing and message[:1] != b"p":
                    self.dropping = True
            if not self.dropping:
                out += message
        return out
