#!/usr/bin/env python3
"""Scripted HTTP/1.1 API server for the apitap recorder (standard library only).

Runs inside the server namespace created by record.sh. Every response is
chosen by the request path, so the clients know exactly what they will get:

  /ok                  200 JSON, Content-Length (POST/PUT: body is read and counted)
  /chunked?n=N         200 JSON, Transfer-Encoding: chunked, N chunks (default 4)
  /empty               200 "{}"
  /status/NNN          status NNN with a small JSON body (none for 1xx/204/304);
                       401 carries WWW-Authenticate, 429/503 Retry-After,
                       500 a Python traceback in the body
  /flip/NAME           200 the first time NAME is asked for, 404 afterwards
  /slow?ms=N           waits N ms, then 200; if the client closes meanwhile the
                       server closes too and never answers
  /close               reads the request, closes the connection without a response (FIN)
  /reset               reads the request head, then SO_LINGER 0 + close (RST)
  /continue            Expect: 100-continue is answered with "100 Continue" (the
                       standard library does that), then the body is read -> 200
  /continue?reject=NNN answers the Expect with the final status NNN and
                       "Connection: close" without reading the body
  /big?bytes=N         200 with an N-byte JSON body (Content-Length)

For the demo scenario (a small API with realistic routes):

  /api/...             200 JSON (POST: 201); query "status=NNN" answers NNN as
                       /status/NNN does, "delay_ms=N" waits N ms first;
                       /api/v0/... adds Deprecation and Sunset headers;
                       /api/v1/login sets a session cookie without Secure/HttpOnly;
                       /api/v1/notifications answers "[]";
                       /api/v1/beta/... answers 200 the first time, 404 afterwards;
                       a path with ".." answers 404
  /catalog/...         200 (many distinct routes: endpoint sprawl)

--tls-port P --cert C --key K also serves the same over TLS on port P;
--other-port P accepts TCP connections that are not HTTP (answers "N", closes).

HEAD gets the GET headers without a body. Request bodies may use
Content-Length or chunked transfer coding.

Usage: api_server.py --bind 10.203.0.1 --port 80 [--log FILE]
"""
import argparse
import json
import select
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REASONS_EXTRA = {418: "I'm a teapot", 425: "Too Early", 499: "Client Closed Request"}

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/api/app.py", line 88, in handle\n'
    "    total = order.lines[0].price\n"
    "IndexError: list index out of range\n"
)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lock = threading.Lock()
        self.aborted = set()      # sockets to close without the usual SHUT_WR
        self.flipped = set()      # /flip/NAME already answered 200
        self.logf = None

    def log(self, **rec):
        if self.logf:
            with self.lock:
                self.logf.write(json.dumps(rec) + "\n")
                self.logf.flush()

    def shutdown_request(self, request):
        with self.lock:
            abort = request in self.aborted
            self.aborted.discard(request)
        if abort:
            self.close_request(request)   # RST (linger 0) or plain close
        else:
            super().shutdown_request(request)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "apitap-rec/1.0"
    sys_version = ""

    # ---------------------------------------------------------------- helpers
    def log_message(self, fmt, *args):  # quiet; the JSONL log is enough
        pass

    def url(self):
        u = urlsplit(self.path)
        return u.path, {k: v[-1] for k, v in parse_qs(u.query).items()}

    def read_body(self):
        """Read a Content-Length or chunked request body; return its length."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            n = 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass                      # trailers
                    break
                got = self.rfile.read(size)
                n += len(got)
                self.rfile.readline(1024)         # CRLF after the chunk
            return n
        cl = int(self.headers.get("Content-Length") or 0)
        left, n = cl, 0
        while left > 0:
            got = self.rfile.read(min(left, 65536))
            if not got:
                break
            n += len(got)
            left -= len(got)
        return n

    def send_json(self, status, obj, extra=(), body=None, head=False):
        if body is None:
            body = b"" if status in (204, 304) or status < 200 else json.dumps(obj).encode()
        self.send_response(status, REASONS_EXTRA.get(status))
        self.send_header("Content-Type", "application/json")
        for k, v in extra:
            self.send_header(k, v)
        if status not in (204, 304) and status >= 200:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head and self.command != "HEAD":
            self.wfile.write(body)
        self.server.log(path=self.path, method=self.command, status=status,
                        body=len(body) if self.command != "HEAD" else 0)

    def abort(self, rst):
        """Close without a response: RST with SO_LINGER 0, else a FIN."""
        if rst:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self.server.lock:
            self.server.aborted.add(self.connection)
        self.close_connection = True
        self.server.log(path=self.path, method=self.command, status=None, abort="rst" if rst else "fin")

    def client_gone(self):
        """True if the client has closed (EOF) or reset its side."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if not r:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # ---------------------------------------------------------------- Expect
    def handle_expect_100(self):
        path, q = self.url()
        if path == "/continue" and "reject" in q:
            code = int(q["reject"])
            self.close_connection = True
            self.send_json(code, {"error": "expectation_rejected", "status": code},
                           extra=[("Connection", "close")])
            return False
        return super().handle_expect_100()

    # ---------------------------------------------------------------- methods
    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_PUT(self):
        self.route()

    def do_PATCH(self):
        self.route()

    def do_DELETE(self):
        self.route()

    def route(self):
        path, q = self.url()
        if path == "/reset":
            self.abort(rst=True)           # body (if any) deliberately left unread
            return
        body_n = self.read_body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else 0
        if path == "/close":
            self.abort(rst=False)
            return
        if path == "/ok":
            self.send_json(200, {"ok": True, "method": self.command, "received": body_n,
                                 "items": [{"id": i, "name": "item-%d" % i} for i in range(5)]})
        elif path == "/empty":
            self.send_json(200, None, body=b"{}")
        elif path == "/continue":
            self.send_json(200, {"ok": True, "received": body_n})
        elif path == "/chunked":
            self.send_chunked(int(q.get("n", 4)))
        elif path.startswith("/status/"):
            self.send_status(int(path.rsplit("/", 1)[1]), body_n)
        elif path.startswith("/flip/"):
            with self.server.lock:
                seen = path in self.server.flipped
                self.server.flipped.add(path)
            if seen:
                self.send_json(404, {"error": "not_found", "path": path})
            else:
                self.send_json(200, {"id": path.rsplit("/", 1)[1], "state": "present"})
        elif path == "/slow":
            deadline = time.monotonic() + int(q.get("ms", 1000)) / 1000.0
            while time.monotonic() < deadline:
                if self.client_gone():
                    self.abort(rst=False)
                    return
                time.sleep(0.05)
            self.send_json(200, {"ok": True, "slept_ms": int(q.get("ms", 1000))})
        elif path == "/big":
            n = int(q.get("bytes", 65536))
            head = b'{"data":"'
            tail = b'"}'
            fill = max(0, n - len(head) - len(tail))
            body = head + (b"0123456789abcdef" * (fill // 16 + 1))[:fill] + tail
            self.send_json(200, None, body=body[:n] if n < len(head) + len(tail) else body)
        elif path.startswith("/api/"):
            self.send_api(path, q, body_n)
        elif path.startswith("/catalog/"):
            self.send_json(200, {"page": path})
        else:
            self.send_json(404, {"error": "not_found", "path": path})

    def send_api(self, path, q, body_n):
        """The demo API: realistic routes, failures chosen by the client."""
        if "delay_ms" in q:
            time.sleep(int(q["delay_ms"]) / 1000.0)
        if "status" in q:
            self.send_status(int(q["status"]), body_n)
            return
        if ".." in path or "%2f" in path.lower():
            self.send_json(404, {"error": "not_found"})
            return
        extra = []
        if path.startswith("/api/v0/"):
            extra += [("Deprecation", "true"), ("Sunset", "Sat, 31 Oct 2026 00:00:00 GMT")]
        if path == "/api/v1/login":
            extra.append(("Set-Cookie", "session=s-7f3a9c2e41d8; Path=/"))
        if path == "/api/v1/notifications":
            self.send_json(200, None, body=b"[]")
            return
        if path.startswith("/api/v1/beta/"):
            with self.server.lock:
                seen = path in self.server.flipped
                self.server.flipped.add(path)
            if seen:
                self.send_json(404, {"error": "not_found", "path": path})
                return
        code = 201 if self.command == "POST" and path != "/api/v1/login" else 200
        self.send_json(code, {"ok": True, "path": path, "received": body_n,
                              "items": [{"id": i, "name": "item-%d" % i} for i in range(3)]},
                       extra=extra)

    def send_status(self, code, body_n):
        extra = []
        obj = {"status": code, "received": body_n}
        body = None
        if code == 401:
            extra.append(("WWW-Authenticate", 'Bearer realm="api", error="invalid_token"'))
            obj["error"] = "unauthorized"
        elif code == 403:
            obj["error"] = "forbidden"
        elif code == 429:
            extra.append(("Retry-After", "2"))
            obj["error"] = "rate_limited"
        elif code == 500:
            obj = {"error": "internal", "trace": TRACEBACK}
        elif code in (502, 503, 504):
            obj["error"] = {502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout"}[code]
            if code == 503:
                extra.append(("Retry-After", "30"))
        self.send_json(code, obj, extra=extra, body=body)

    def send_chunked(self, n):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        parts = [b'{"events":['] + [
            (b"," if i else b"") + json.dumps({"seq": i, "msg": "event %d " % i + "x" * (40 * i)}).encode()
            for i in range(max(0, n - 2))] + [b"]}"]
        total = 0
        for p in parts:
            if self.command != "HEAD":
                self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
            total += len(p)
            time.sleep(0.02)          # separate TCP segments per chunk
        if self.command != "HEAD":
            self.wfile.write(b"0\r\n\r\n")
        self.server.log(path=self.path, method=self.command, status=200, body=total, chunked=True)


def other_protocol(bind, port):
    """A TCP service that is not HTTP: read what the client says, answer "N", close."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, port))
    ls.listen(16)
    while True:
        c, _ = ls.accept()
        try:
            c.settimeout(2)
            c.recv(4096)
            c.sendall(b"N")
        except OSError:
            pass
        finally:
            c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bind", default="10.203.0.1")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--log", help="JSONL log of what the server did (debugging only)")
    ap.add_argument("--tls-port", type=int, help="also serve over TLS on this port (demo)")
    ap.add_argument("--cert", help="PEM certificate for --tls-port")
    ap.add_argument("--key", help="PEM key for --tls-port")
    ap.add_argument("--other-port", type=int, help="accept non-HTTP TCP on this port (demo)")
    a = ap.parse_args()
    srv = Server((a.bind, a.port), Handler)
    if a.log:
        srv.logf = open(a.log, "a")
    if a.tls_port:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        tls = Server((a.bind, a.tls_port), Handler)
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        tls.logf = srv.logf
        threading.Thread(target=tls.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    if a.other_port:
        threading.Thread(target=other_protocol, args=(a.bind, a.other_port), daemon=True).start()
    print("listening on %s:%d" % (a.bind, a.port), flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
