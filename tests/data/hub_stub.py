"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, enough for ``HfFileSystem``
(``hf://datasets/…`` URLs) to list a dataset repository and read its files: repository info,
the tree listing, paths-info and ``resolve`` downloads with byte ranges. The Hub itself cannot be
reached from the test machines; this checks that ``distil prepare`` reaches files through
fsspec's ``hf://`` the way it reaches ``s3://``, not how the Hub behaves."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """The tree endpoint's answer: files and folders under ``prefix``."""
    out: list[dict[str, Any]] = []
    folders: set[str] = set()
    base = prefix + "/" if prefix else ""
    for path, data in sorted(files.items()):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for k in range(1, len(parts) if recursive else min(len(parts), 2)):
            folder = base + "/".join(parts[:k])
            if folder not in folders:
                folders.add(folder)
                out.append({"type": "directory", "oid": "0" * 40, "path": folder})
        if recursive or len(parts) == 1:
            oid = hashlib.sha1(data).hexdigest()
            out.append({"type": "file", "oid": oid, "size": len(data), "path": path})
    return out


def _handler(files: dict[str, bytes], requests: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Repo-Commit", REVISION)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            requests.append(f"GET {url.path}")
            if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(/revision/[^/]+)?", url.path):
                info = {"id": m.group(1), "sha": REVISION}
                return self._send(200, json.dumps(info).encode())
            if m := re.fullmatch(r"/api/datasets/[^/]+/[^/]+/tree/[^/]+/?(.*)", url.path):
                recursive = parse_qs(url.query).get("recursive", ["false"])[0] == "true"
                listing = _entries(files, unquote(m.group(1)).strip("/"), recursive)
                return self._send(200, json.dumps(listing).encode())
            if m := re.fullmatch(r"/datasets/[^/]+/[^/]+/resolve/[^/]+/(.*)", url.path):
                data = files.get(unquote(m.group(1)))
                if data is None:
                    return self._send(404, b'{"error": "Entry not found"}')
                if rng := self.headers.get("range"):
                    start, _, end = rng.removeprefix("bytes=").partition("-")
                    stop = int(end) + 1 if end else len(data)
                    return self._send(206, data[int(start) : stop], "application/octet-stream")
                return self._send(200, data, "application/octet-stream")
            return self._send(404, b'{"error": "not in the stub"}')

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            requests.append(f"POST {url.path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            if re.fullmatch(r"/api/datasets/[^/]+/[^/]+/paths-info/[^/]+", url.path):
                wanted = set(parse_qs(body).get("paths", []))
                found = [e for e in _entries(files, "", True) if e["path"] in wanted]
                return self._send(200, json.dumps(found).encode())
            return self._send(404, b'{"error": "not in the stub"}')

    return Handler


@contextmanager
def hub(files: dict[str, bytes]) -> Iterator[tuple[str, list[str]]]:
    """A stub Hub serving ``files`` (path in the repository -> bytes) for any dataset
    repository: ``(its endpoint URL for HF_ENDPOINT, the requests it got)``."""
    requests: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files, requests))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
