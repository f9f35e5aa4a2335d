"""A local HTTP server (127.0.0.1 only) that misbehaves on purpose, for the tests of weight
downloads: cut connections, chunked bodies cut short, no Content-Length, server errors, and a
body that stalls half sent until the test releases it."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator

HOLD_S = 180.0  # a held answer never outlives the test that asked for it


class MisbehavingServer(http.server.ThreadingHTTPServer):
    """Serves ``files``; each request to a path takes the next behaviour planned for it
    ("whole" once the plan is used up) and is recorded with its Range header."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.plans: dict[str, list[str]] = {}
        self.seen: list[tuple[str, str | None]] = []
        self.held = threading.Event()  # set while a "hold" answer is half sent
        self.release = threading.Event()
        self.hold_s = HOLD_S  # how long a "hold" answer waits for release at most

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: MisbehavingServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        server.seen.append((self.path, self.headers.get("Range")))
        plan = server.plans.get(self.path) or []
        behaviour = plan.pop(0) if plan else "whole"
        self.close_connection = True
        if self.path not in server.files or behaviour == "404":
            self._status_only(404)
            return
        if behaviour == "500":
            self._status_only(500)
            return
        data = server.files[self.path]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and behaviour != "no-ranges":
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if behaviour == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
        elif behaviour not in ("no-length", "no-length-cut"):
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if behaviour == "chunked-cut":
            half = body[: len(body) // 2]
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
        elif behaviour in ("cut", "no-length-cut"):
            self.wfile.write(body[: len(body) // 2])
        elif behaviour == "hold":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            server.held.set()
            server.release.wait(server.hold_s)
            self.wfile.write(body[len(body) // 2 :])
        else:
            self.wfile.write(body)
        self.wfile.flush()

    def _status_only(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def serving() -> Iterator[MisbehavingServer]:
    """A started server, for a fixture to ``yield from``; stopped (and released) afterwards."""
    server = MisbehavingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
