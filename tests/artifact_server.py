"""A real HTTP artifact server for tests, with the faults that edge links really have.

    with ArtifactServer({"sha256/ab..": data}) as server:
        server.drop("sha256/ab..", after=1000)      # cut the connection once after 1000 bytes
        fetch(server.url + "sha256/ab..")
        assert server.requests[-1].range == "bytes=1000-"

Paths are kept without their leading slash. Every knob is a plain dict or set keyed by path,
so a test can change it at any time; the handler reads it under the server's lock.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import pytest

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
# Throttled and stalled responses are written in pieces this often, to look like a slow link.
_TICK_S = 0.05


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ArtifactServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # keeps pytest's output to what the tests say

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0].lstrip("/")
        range_header = self.headers.get("Range")
        with owner.lock:
            owner.requests.append(Request(path, range_header))
            data = owner.files.get(path)
            status = owner.status.get(path)
            ignore_range = path in owner.ignore_range
            extra = owner.extra_bytes.get(path, 0)
            no_length = path in owner.no_length
            rate = owner.slow.get(path)
            stall = owner.stall.get(path)
            drop = owner.drop_after.get(path)
            if drop is not None:
                left = owner.drops_left.get(path, 1)
                if left == 0:
                    drop = None
                elif left > 0:
                    owner.drops_left[path] = left - 1
        if data is None or status is not None:
            self._reply_empty(status or 404)
            return
        body = data + b"\0" * extra
        code, start, end = 200, 0, len(body)
        match = _RANGE.fullmatch(range_header or "")
        if match and not ignore_range:
            start = int(match[1])
            if start >= len(body):
                self._reply_empty(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            if match[2]:
                end = min(len(body), int(match[2]) + 1)
            code = 206
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        if no_length:
            # HTTP/1.0 style: the body ends when the connection closes.
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start))
        self.end_headers()
        payload = body[start:end]
        if drop is not None:
            payload = payload[:drop]
        if stall is not None:
            payload = payload[:stall]
        try:
            self._write(payload, rate)
            if stall is not None:
                owner.closing.wait()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if drop is not None or stall is not None:
            self.close_connection = True
            self.wfile.flush()
            # The client sees the stream end in the middle of the declared length.
            self.connection.shutdown(socket.SHUT_RDWR)

    def _write(self, payload: bytes, rate: float | None) -> None:
        owner = self.server.owner
        if rate is None:
            self.wfile.write(payload)
            return
        step = max(1, int(rate * _TICK_S))
        next_at = time.monotonic()
        for offset in range(0, len(payload), step):
            if owner.closing.is_set():
                raise BrokenPipeError
            self.wfile.write(payload[offset : offset + step])
            self.wfile.flush()
            next_at += _TICK_S
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _reply_empty(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class ArtifactServer:
    """An HTTP server on 127.0.0.1 in a thread, serving `files` with injectable faults.

    Fault knobs, each keyed by path:
      drop_after[p] = n   send the full Content-Length but only n bytes, then close;
                          drops_left[p] says how many times (default 1; negative: always)
      ignore_range        answer every request with 200 and the whole file
      extra_bytes[p] = n  send n bytes more than the file (declared, unless p in no_length)
      no_length           send no Content-Length; the body ends when the connection closes
      slow[p] = r         throttle to r bytes per second
      stall[p] = n        send n bytes then hang (until the server stops)
      status[p] = code    answer with this status and no body
    """

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.drop_after: dict[str, int] = {}
        self.drops_left: dict[str, int] = {}
        self.ignore_range: set[str] = set()
        self.extra_bytes: dict[str, int] = {}
        self.no_length: set[str] = set()
        self.slow: dict[str, float] = {}
        self.stall: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.closing = threading.Event()
        for path, data in (files or {}).items():
            self.add(path, data)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def add(self, path: str, data: bytes) -> None:
        with self.lock:
            self.files[path.lstrip("/")] = data

    def drop(self, path: str, after: int, times: int = 1) -> None:
        """Cut the connection after `after` bytes, `times` times (negative: every time)."""
        with self.lock:
            self.drop_after[path] = after
            self.drops_left[path] = times

    def requests_for(self, path: str) -> list[Request]:
        with self.lock:
            return [request for request in self.requests if request.path == path.lstrip("/")]

    def start(self) -> ArtifactServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ArtifactServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def artifact_server() -> Iterator[ArtifactServer]:
    """A running ArtifactServer, stopped after the test (register with `pytest_plugins`)."""
    with ArtifactServer() as server:
        yield server


def unused_port_url() -> str:
    """An http:// URL on a local port where nothing listens: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
