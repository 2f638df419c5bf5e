"""A tiny Hub-compatible HTTP server for tests: answers the real `huggingface_hub` client and records requests.

It implements just enough of the Hub API for `HfApi.whoami`, `create_repo` and `upload_folder` (small files,
regular base64 commits) to succeed:

    GET  /api/whoami-v2                               200 for the accepted token, else 401
    POST /api/repos/create                            records name/organization/visibility, returns the repo URL
    POST /api/validate-yaml                           200 {} (README.md front matter check)
    POST /api/models/{ns}/{name}/preupload/{rev}      every file "regular" (base64 in the commit, no LFS/xet)
    POST /api/models/{ns}/{name}/commit/{rev}         parses the NDJSON payload, returns a commit URL/oid

Anything else answers 404 so that an unexpected call shows up in `requests`.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class RecordedRequest:
    """One request as the server saw it; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class RecordingHub:
    """Threaded HTTP server on 127.0.0.1 (random port); use as a context manager."""

    token: str
    username: str = "tester"
    orgs: tuple[str, ...] = ("vlmkit-org",)
    role: str = "write"
    requests: list[RecordedRequest] = field(default_factory=list)

    def __enter__(self) -> RecordingHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:
                hub._handle(self)

            def do_POST(self) -> None:
                hub._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ---- queries used by the tests -------------------------------------------------------------------
    def find(self, method: str, path_part: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    def committed_files(self) -> dict[str, bytes]:
        """Path -> decoded content of every file in every commit payload."""
        files: dict[str, bytes] = {}
        for req in self.find("POST", "/commit/"):
            for item in req.ndjson():
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        return files

    # ---- request handling ----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        self.requests.append(RecordedRequest(h.command, h.path, headers, body))
        path = h.path.split("?", 1)[0]
        authorized = headers.get("authorization") == f"Bearer {self.token}"

        if not authorized and path != "/api/validate-yaml":
            return self._reply(h, 401, {"error": "Invalid credentials in Authorization header"})
        if h.command == "GET" and path == "/api/whoami-v2":
            return self._reply(h, 200, self._whoami())
        if h.command == "POST" and path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data.get('organization') or self.username}/{data['name']}"
            return self._reply(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": "0" * 24})
        if h.command == "POST" and path == "/api/validate-yaml":
            return self._reply(h, 200, {})
        if h.command == "POST" and path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._reply(h, 200, {"files": answer, "commitOid": "0" * 40})
        if h.command == "POST" and path.startswith("/api/models/") and "/commit/" in path:
            repo_id = path[len("/api/models/") :].split("/commit/")[0]
            oid = "c" * 40
            reply = {
                "commitUrl": f"{self.url}/{repo_id}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            }
            return self._reply(h, 200, reply)
        return self._reply(h, 404, {"error": f"recording hub does not implement {h.command} {path}"})

    def _whoami(self) -> dict:
        return {
            "type": "user",
            "name": self.username,
            "orgs": [{"name": org, "type": "org"} for org in self.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": self.role}},
        }

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


class SilentServer:
    """A listening socket that completes TCP handshakes (via the backlog) but never answers."""

    def __enter__(self) -> SilentServer:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self._sock.close()


def closed_port_url() -> str:
    """URL of a loopback port nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
