#!/usr/bin/env python3
"""Count S3 requests with a reverse proxy on 127.0.0.1 in front of one server.

Usage: count_proxy.py LISTEN_PORT UPSTREAM_PORT COUNTS_FILE

Forwards every request unchanged (the Host header too, so SigV4 signatures
stay valid) to 127.0.0.1:UPSTREAM_PORT, and after each request rewrites
COUNTS_FILE with a JSON object of counts by HTTP method and by S3 operation
(PutObject, UploadPart, CreateMultipartUpload, ...). Only for benchmarks: it
relays one request at a time per connection and is slower than a direct
connection, so timed runs never go through it.
"""

import http.client
import json
import os
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

COPY_CHUNK = 1 << 20
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


def operation(method: str, path: str) -> str:
    """Return the S3 operation name of a request, from its method and query."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        return "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "delete" in query:
            return "DeleteObjects"
        return "POST"
    if method == "GET" and ("list-type" in query or urlsplit(path).path.strip("/").count("/") == 0):
        return "ListObjects"
    return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, method)


class Counts:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        self.methods = Counter()
        self.operations = Counter()
        self.save()

    def add(self, method: str, op: str) -> None:
        with self.lock:
            self.methods[method] += 1
            self.operations[op] += 1
            self.save()

    def save(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump({"methods": self.methods, "operations": self.operations}, f)
        # Rename, so a reader never sees a half-written file.
        os.replace(self.path + ".tmp", self.path)


def make_handler(upstream_port: int, counts: Counts):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def relay(self):
            method = self.command
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            length = int(self.headers.get("Content-Length", 0) or 0)
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()

            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=300)
            conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if chunked:
                # S3 clients rarely send chunked bodies, so buffering one is cheap enough.
                body = self.read_chunked()
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                conn.send(body)
            else:
                conn.endheaders()
                remaining = length
                while remaining > 0:
                    block = self.rfile.read(min(COPY_CHUNK, remaining))
                    if not block:
                        break
                    conn.send(block)
                    remaining -= len(block)

            response = conn.getresponse()
            counts.add(method, operation(method, self.path))
            self.send_response_only(response.status, response.reason)
            out_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            body_length = response.getheader("Content-Length")
            no_body = method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
            if no_body or body_length is not None:
                for k, v in out_headers:
                    self.send_header(k, v)
                self.end_headers()
                if not no_body:
                    while True:
                        block = response.read(COPY_CHUNK)
                        if not block:
                            break
                        self.wfile.write(block)
            else:
                data = response.read()
                for k, v in out_headers:
                    if k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            conn.close()

        def read_chunked(self) -> bytes:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay

    return Handler


def main() -> int:
    listen_port, upstream_port, counts_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    counts = Counts(counts_file)
    server = ThreadingHTTPServer(("127.0.0.1", listen_port), make_handler(upstream_port, counts))
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
