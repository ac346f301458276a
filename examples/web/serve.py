"""Serve the browser example with an artifact and its training data on 127.0.0.1.

    python examples/web/serve.py ARTIFACT_DIR DATA.safetensors [--port 8000]

then open http://127.0.0.1:8000/ . The page (``examples/web``) trains the
artifact with onnxruntime-web's WASM build and plots the loss as it goes.
Routes: ``/web/`` and ``/js/`` are files of ``examples/``, ``/artifact/`` the
artifact directory, ``/data.safetensors`` the data; the page POSTs its
results to ``/report`` when asked to (``?report=/report``), which is how the
tests read them. Only files under those roots are served.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

EXAMPLES = Path(__file__).resolve().parent.parent
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".safetensors": "application/octet-stream",
}
PAGE = "/web/index.html?artifact=/artifact/&data=/data.safetensors"


class ExampleServer(ThreadingHTTPServer):
    """Serves the page, ``artifact_dir`` and ``data_file``; hands each POSTed report to ``on_report``."""

    def __init__(self, artifact_dir, data_file, port: int = 0, on_report: Callable[[dict], None] | None = None):
        self.roots = {"/web/": EXAMPLES / "web", "/js/": EXAMPLES / "js", "/artifact/": Path(artifact_dir).resolve()}
        self.data_file = Path(data_file).resolve()
        self.on_report = on_report or (lambda report: print(json.dumps(report)))
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def resolve(self, path: str) -> Path | None:
        """The file behind a URL path, or None when it is outside every root."""
        if path == "/data.safetensors":
            return self.data_file
        for prefix, root in self.roots.items():
            if path.startswith(prefix):
                file = (root / path[len(prefix) :]).resolve()
                return file if file.is_relative_to(root) and file.is_file() else None
        return None

    def start(self) -> ExampleServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class _Handler(BaseHTTPRequestHandler):
    server: ExampleServer

    def do_GET(self):  # noqa: N802 - http.server's name
        path = unquote(urlsplit(self.path).path)
        if path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", PAGE)
            self.end_headers()
            return
        file = self.server.resolve(path)
        if file is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        body = file.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", TYPES.get(file.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        # cross-origin isolation lets onnxruntime-web use WASM threads
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        if urlsplit(self.path).path != "/report":
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        report = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(HTTPStatus.NO_CONTENT)
        self.end_headers()
        self.server.on_report(report)

    def log_message(self, format, *args):  # quiet: the page reports what matters
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir")
    parser.add_argument("data_file")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ExampleServer(args.artifact_dir, args.data_file, args.port)
    print(f"open {server.url}/  (Ctrl-C stops)")
    server.serve_forever()


if __name__ == "__main__":
    main()
