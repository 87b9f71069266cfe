#!/usr/bin/env python3
"""Scenario clients for the apitap recorder (standard library + the curl binary).

Runs inside the client namespace created by record.sh and drives the scripted
server (api_server.py) with curl and with raw Python sockets. Every request it
sends is written to a JSONL log, one line per exchange, with what the client
itself sent and received (never anything read from the capture):

  seq, tool ("curl"|"raw"), conn (client connection number), client_port,
  method, target, host (Host header value sent, null if none), status (final
  status received, null if none), interim (1xx statuses received), client_error
  ("reset" | "closed" | "timeout" | null), request_body_bytes (body bytes the
  client sent, de-chunked), request_body_declared (Content-Length sent, null
  if none or chunked), response_body_bytes (body bytes received,
  de-chunked), response_body_empty (body empty or JSON {} / [] / null),
  credentials (Authorization / API key / Cookie / credential query param sent),
  jwt_expired (a JWT with exp in the past was sent), chunked_request,
  chunked_response, t_send, t_end (epoch seconds), note.

Usage: client.py SCENARIO --server 10.203.0.1 --port 80 --log FILE
Scenarios: keepalive pipelining chunked continue statuses reset timeout mixed demo
"""
import argparse
import base64
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SERVER = "10.203.0.1"
PORT = 80
HOST = "api.example.com"          # the name clients put in Host (curl: --resolve)
LOG = None
LOCK = threading.Lock()
SEQ = itertools.count(1)
CONN = itertools.count(1)
CONN_BY_PORT = {}
FILES = itertools.count(1)
UA = "apitap-recorder/1.0"


def next_seq():
    with LOCK:
        return next(SEQ)


def conn_id(port):
    with LOCK:
        if port not in CONN_BY_PORT:
            CONN_BY_PORT[port] = next(CONN)
        return CONN_BY_PORT[port]


def log(**rec):
    with LOCK:
        LOG.write(json.dumps(rec, sort_keys=True) + "\n")
        LOG.flush()


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(exp, iat):
    h = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    p = b64url(json.dumps({"sub": "user-17", "iat": iat, "exp": exp}, separators=(",", ":")).encode())
    return "%s.%s.%s" % (h, p, b64url(b"not-a-real-signature-0123456789ab"))


NOW = int(time.time())
JWT_VALID = jwt(NOW + 3600, NOW)            # expires an hour after recording
JWT_EXPIRED = jwt(1577840400, 1577836800)   # 2020-01-01, long expired


def is_empty_body(b):
    return b.strip() in (b"", b"{}", b"[]", b"null")


# ============================================================== raw sockets
class Closed(Exception):
    pass


class Raw:
    """One client TCP connection with a small HTTP/1.1 response reader."""

    def __init__(self, timeout=5.0, addr=None, port=None):
        self.sock = socket.create_connection((addr or SERVER, port or PORT), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = self.sock.getsockname()[1]
        self.conn = conn_id(self.port)
        self.buf = b""

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise Closed()
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def read_head(self):
        status_line = self._line()
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
        return status, headers

    def read_response(self, method, res):
        """Fill res with interim, status, body size; raises on errors."""
        while True:
            status, headers = self.read_head()
            if 100 <= status < 200 and status != 101:
                res["interim"].append(status)
                continue
            break
        res["status_line_seen"] = status
        body = b""
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        res["chunked_response"] = chunked
        if method == "HEAD" or status in (204, 304):
            pass
        elif chunked:
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exact(size)
                self._exact(2)
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        else:
            try:
                while True:
                    self._fill()
            except Closed:
                body, self.buf = self.buf, b""
        res["status"] = status
        res["response_body_bytes"] = len(body)
        res["response_body_empty"] = is_empty_body(body)
        res["server_closes"] = headers.get("connection", "").lower() == "close"
        return res

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def build(method, target, host=HOST, headers=(), body=b"", chunks=None):
    lines = ["%s %s HTTP/1.1" % (method, target)]
    if host is not None:
        lines.append("Host: " + host)
    lines.append("User-Agent: " + UA)
    lines.append("Accept: application/json")
    lines.extend(headers)
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
    elif body or method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: %d" % len(body))
    if body or chunks is not None:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def new_res(tool, conn, port, method, target, host, headers=(), note=None):
    hl = [h.lower() for h in headers]
    creds = any(h.startswith(("authorization:", "x-api-key:", "cookie:")) for h in hl)
    return {"tool": tool, "conn": conn, "client_port": port, "method": method, "target": target,
            "host": host, "status": None, "interim": [], "client_error": None,
            "request_body_bytes": 0, "request_body_declared": None,
            "response_body_bytes": 0, "response_body_empty": None,
            "credentials": creds or ("token=" in target or "api_key=" in target),
            "jwt_expired": any(JWT_EXPIRED in h for h in headers),
            "chunked_request": False, "chunked_response": False, "note": note}


def err_name(e):
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, Closed):
        return "closed"
    return "error:" + type(e).__name__


def finish(res, t_send, seq, t_end=None):
    res.pop("status_line_seen", None)
    res.pop("server_closes", None)
    res["t_send"] = round(t_send, 6)
    res["t_end"] = round(time.time() if t_end is None else t_end, 6)
    res["seq"] = seq
    log(**res)
    return res


def raw_exchange(c, method, target, host=HOST, headers=(), body=b"", chunks=None,
                 chunk_delay=0.0, read_timeout=5.0, note=None, expect_wait=False):
    """Send one request on Raw connection c and read its response."""
    res = new_res("raw", c.conn, c.port, method, target, host, headers, note)
    if chunks is None and (body or method in ("POST", "PUT", "PATCH")):
        res["request_body_declared"] = len(body)
    seq = next_seq()
    t = time.time()
    try:
        c.sock.settimeout(read_timeout)
        head = build(method, target, host, headers, body, chunks)
        if chunks is not None:
            res["chunked_request"] = True
            c.sock.sendall(head)
            for ch in chunks:
                time.sleep(chunk_delay)
                c.sock.sendall(b"%x\r\n%s\r\n" % (len(ch), ch))
                res["request_body_bytes"] += len(ch)
            time.sleep(chunk_delay)
            c.sock.sendall(b"0\r\n\r\n")
        elif expect_wait:
            c.sock.sendall(head)
            st, _ = c.read_head()           # wait for the interim response
            if st != 100:
                raise RuntimeError("expected 100 Continue, got %d" % st)
            res["interim"].append(st)
            c.sock.sendall(body)
            res["request_body_bytes"] = len(body)
        else:
            c.sock.sendall(head + body)
            res["request_body_bytes"] = len(body)
        c.read_response(method, res)
    except (OSError, Closed) as e:
        res["client_error"] = err_name(e)
    return finish(res, t, seq)


def raw_pipeline(c, reqs, read_timeout=5.0, note=None):
    """Write several requests in one send, then read the responses in order."""
    data = b""
    rs = []
    t = time.time()
    for method, target, headers, body in reqs:
        data += build(method, target, HOST, headers, body) + body
        r = new_res("raw", c.conn, c.port, method, target, HOST, headers, note)
        r["request_body_bytes"] = len(body)
        if body or method in ("POST", "PUT", "PATCH"):
            r["request_body_declared"] = len(body)
        rs.append((r, next_seq()))
    c.sock.settimeout(read_timeout)
    err = None
    try:
        c.sock.sendall(data)
    except OSError as e:
        err = err_name(e)
    for (r, seq), (method, *_rest) in zip(rs, reqs):
        if err is None:
            try:
                c.read_response(method, r)
            except (OSError, Closed) as e:
                err = err_name(e)
                r["client_error"] = err
        else:
            r["client_error"] = err
        finish(r, t, seq)


# ============================================================== curl
CURL_DIR = None


def curl(transfers, common=()):
    """One curl process, several transfers (joined with --next: connection reuse).

    transfers: list of dicts: method, target, host (None = IP URL), args (extra
    curl args), body (bytes, sent from a file), chunked, headers (list),
    note, max_time.
    """
    cmd = ["curl", "--no-progress-meter", "--http1.1"]
    metas = []
    for i, tr in enumerate(transfers):
        if i:
            cmd.append("--next")
        host = tr.get("host", HOST)
        url_host = host or SERVER
        n = len(metas)
        out = os.path.join(CURL_DIR, "body-%d" % next(FILES))
        hdr = out + ".hdr"
        cmd += ["-o", out, "-D", hdr, "-w", "%{json}\\n", "-A", UA, "-H", "Accept: application/json",
                "--resolve", "%s:%d:%s" % (HOST, PORT, SERVER), *common]
        method = tr.get("method", "GET")
        headers = list(tr.get("headers", []))
        body = tr.get("body")
        if method == "HEAD":
            cmd.append("-I")
        elif method != "GET" or body is not None:
            cmd += ["-X", method]
        if body is not None:
            bf = out + ".req"
            with open(bf, "wb") as f:
                f.write(body)
            cmd += ["--data-binary", "@" + bf, "-H", "Content-Type: application/json"]
        if tr.get("chunked"):
            headers.append("Transfer-Encoding: chunked")
        for h in headers:
            cmd += ["-H", h]
        if tr.get("max_time"):
            cmd += ["--max-time", str(tr["max_time"])]
        cmd += tr.get("args", [])
        cmd.append("http://%s:%d%s" % (url_host, PORT, tr["target"]) if PORT != 80
                   else "http://%s%s" % (url_host, tr["target"]))
        r = new_res("curl", None, None, method, tr["target"], url_host if PORT == 80 else "%s:%d" % (url_host, PORT),
                    headers, tr.get("note"))
        r["chunked_request"] = bool(tr.get("chunked"))
        if body is not None and not tr.get("chunked"):
            r["request_body_declared"] = len(body)
        if "-u" in tr.get("args", []):
            r["credentials"] = True          # Basic credentials from curl -u
        metas.append((r, out, hdr, body, n))
    seqs = [next_seq() for _ in metas]
    t = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [json.loads(l) for l in p.stdout.decode().splitlines() if l.strip().startswith("{")]
    if len(lines) != len(metas):
        sys.stderr.write("curl gave %d -w lines for %d transfers: %s\n%s\n" %
                         (len(lines), len(metas), " ".join(cmd), p.stderr.decode()))
    t_next = t
    for (r, out, hdr, body, _), seq, w in zip(metas, seqs, lines + [None] * len(metas)):
        if w is None:
            r["client_error"] = "error:curl_no_output"
            finish(r, t, seq)
            continue
        # per-transfer times: the process start plus the earlier transfers' time_total
        t_send, t_next = t_next, t_next + float(w.get("time_total") or 0)
        r["client_port"] = w.get("local_port") or None
        r["conn"] = conn_id(r["client_port"]) if r["client_port"] else None
        # status lines actually received, from the -D header dump
        statuses = []
        if os.path.exists(hdr):
            for line in open(hdr, "rb").read().split(b"\r\n"):
                if line.startswith(b"HTTP/"):
                    statuses.append(int(line.split()[1]))
                    r["chunked_response"] = False        # headers of the last block count
                elif line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                    r["chunked_response"] = True
        final = [s for s in statuses if not (100 <= s < 200)]
        r["interim"] = [s for s in statuses if 100 <= s < 200]
        r["status"] = final[-1] if final else None
        rb = open(out, "rb").read() if os.path.exists(out) else b""
        r["response_body_bytes"] = int(w.get("size_download") or 0)
        if r["status"] is None:
            r["response_body_bytes"] = 0
        r["response_body_empty"] = None if r["status"] is None else (
            True if method == "HEAD" else is_empty_body(rb))   # curl -I writes the headers to -o
        # size_upload counts chunk framing too: report the de-chunked body we gave curl
        up = int(w.get("size_upload") or 0)
        r["request_body_bytes"] = len(body) if body is not None and up >= len(body) else up
        ec = int(w.get("exitcode") or 0)
        r["curl_exit"] = ec
        if ec:
            r["client_error"] = {56: "reset", 52: "closed", 28: "timeout", 7: "connect",
                                 55: "reset"}.get(ec, "error:curl_%d" % ec)
            r["curl_errormsg"] = w.get("errormsg")
        finish(r, t_send, seq, t_end=t_next)
    return p.returncode


# ============================================================== scenarios
def body_json(n, tag="x"):
    """A JSON body of exactly n bytes."""
    head, tail = b'{"payload":"', b'"}'
    fill = n - len(head) - len(tail)
    return head + (tag.encode() * fill)[:fill] + tail


def sc_keepalive():
    # curl: nine transfers on one keep-alive connection
    curl([
        {"target": "/ok"},
        {"target": "/ok?page=2&limit=5"},
        {"method": "POST", "target": "/ok", "body": body_json(300)},
        {"method": "PUT", "target": "/ok", "body": body_json(120, "p")},
        {"target": "/empty", "note": "200 with {} body"},
        {"method": "HEAD", "target": "/ok"},
        {"target": "/big?bytes=20000"},
        {"method": "DELETE", "target": "/status/204"},
        {"target": "/ok", "headers": ["Authorization: Bearer " + JWT_VALID]},
    ])
    # raw: four requests one after the other on one socket, the last asks to close
    c = Raw()
    raw_exchange(c, "GET", "/ok")
    raw_exchange(c, "POST", "/status/201", body=body_json(200))
    raw_exchange(c, "GET", "/empty")
    raw_exchange(c, "GET", "/ok?last=1", headers=["Connection: close"])
    c.close()


def sc_pipelining():
    c = Raw()
    raw_pipeline(c, [("GET", "/ok", [], b""), ("GET", "/chunked?n=3", [], b""),
                     ("GET", "/status/404", [], b"")], note="3 requests in one send")
    c.close()
    c = Raw()
    raw_pipeline(c, [("POST", "/ok", [], body_json(150)), ("GET", "/empty", [], b""),
                     ("GET", "/ok?end=1", ["Connection: close"], b"")],
                 note="3 requests in one send, last with Connection: close")
    c.close()


def sc_chunked():
    curl([
        {"target": "/chunked?n=5", "note": "chunked response"},
        {"method": "POST", "target": "/ok", "body": body_json(700), "chunked": True,
         "headers": ["Expect:"], "note": "chunked request body (curl)"},
    ])
    c = Raw()
    raw_exchange(c, "POST", "/ok", chunks=[b'{"items":[', b'{"id":1},{"id":2}', b',{"id":3}]}'],
                 chunk_delay=0.02, note="chunked request body in 3 chunks, one segment each")
    raw_exchange(c, "GET", "/chunked?n=8", note="chunked response on a reused connection")
    raw_exchange(c, "PUT", "/chunked?n=2", chunks=[b"x" * 2000], note="chunked request and response")
    c.close()


def sc_continue():
    curl([{"method": "POST", "target": "/continue", "body": body_json(2048),
           "headers": ["Expect: 100-continue"], "note": "100 Continue then 200"}])
    curl([{"method": "PUT", "target": "/continue?reject=417", "body": body_json(4096),
           "headers": ["Expect: 100-continue"], "note": "417 instead of 100, body never sent"}])
    c = Raw()
    raw_exchange(c, "POST", "/continue", headers=["Expect: 100-continue"], body=body_json(3000),
                 expect_wait=True, note="raw: waits for 100, then sends the body")
    raw_exchange(c, "GET", "/ok", note="same connection after the 100-continue exchange")
    c.close()


def sc_statuses():
    curl([
        {"target": "/status/401", "note": "no credentials"},
        {"target": "/status/401", "headers": ["Authorization: Bearer " + JWT_VALID], "note": "valid-looking JWT"},
        {"target": "/status/401", "args": ["-u", "alice:wrong-password"], "note": "Basic credentials"},
        {"target": "/status/401", "headers": ["Authorization: Bearer " + JWT_EXPIRED], "note": "expired JWT"},
        {"target": "/status/403", "headers": ["Authorization: Bearer " + JWT_VALID]},
        {"target": "/status/403", "headers": ["Authorization: Bearer " + JWT_EXPIRED], "note": "expired JWT"},
        {"target": "/status/403"},
    ])
    curl([
        {"target": "/status/404"},
        {"target": "/flip/widget-7", "note": "200 first"},
        {"target": "/flip/widget-7", "note": "404 on a path that answered 200 before"},
        {"target": "/status/410"},
        {"target": "/status/429"},
        {"method": "POST", "target": "/status/400", "body": body_json(90)},
        {"target": "/status/404", "host": None, "note": "IP-literal Host"},
    ])
    c = Raw()
    for code in (500, 502, 503, 504):
        raw_exchange(c, "GET", "/status/%d" % code)
    raw_exchange(c, "GET", "/status/401", headers=["X-API-Key: k-123456"], note="API-key header")
    c.close()


def sc_reset():
    curl([{"target": "/reset", "note": "server resets after reading the request"}])
    c = Raw()
    raw_exchange(c, "GET", "/ok")
    raw_exchange(c, "GET", "/reset", note="reset on a reused connection")
    c.close()
    # POST whose body is cut off by the server's RST
    c = Raw()
    res = new_res("raw", c.conn, c.port, "POST", "/reset", HOST, note="RST while the body is being sent")
    res["request_body_declared"] = 8000
    seq = next_seq()
    t = time.time()
    body = body_json(8000)
    head = build("POST", "/reset", HOST, (), body)
    try:
        c.sock.sendall(head + body[:1000])
        res["request_body_bytes"] = 1000
        time.sleep(0.3)
        c.sock.sendall(body[1000:])
        res["request_body_bytes"] = len(body)
        c.read_response("POST", res)
    except (OSError, Closed) as e:
        res["client_error"] = err_name(e)
    finish(res, t, seq)
    c.close()
    c = Raw()
    raw_exchange(c, "GET", "/close", note="server closes (FIN) without responding")
    c.close()
    curl([{"target": "/close", "note": "server closes (FIN) without responding"}])


def timeout_giveup():
    c = Raw()
    raw_exchange(c, "GET", "/slow?ms=6000", read_timeout=3.5,
                 note="server would answer after 6 s; client gives up after 3.5 s and closes")
    c.close()


def timeout_late():
    c = Raw()
    raw_exchange(c, "GET", "/slow?ms=3000", read_timeout=3.5,
                 note="answer after 3 s, within the client's 3.5 s")
    c.close()


def sc_timeout():
    timeout_late()
    timeout_giveup()
    curl([{"target": "/slow?ms=6000", "max_time": 3.5, "note": "curl --max-time 3.5 gives up"}])


def sc_mixed():
    # the give-up timeout runs in the background, on its own connection,
    # while everything else goes on: overlapping connections in the capture
    started = threading.Event()

    def bg():
        c = Raw()
        started.set()
        raw_exchange(c, "GET", "/slow?ms=6000", read_timeout=3.5,
                     note="server would answer after 6 s; client gives up after 3.5 s and closes")
        c.close()
    th = threading.Thread(target=bg)
    th.start()
    started.wait()
    time.sleep(0.1)
    for f in (sc_keepalive, sc_pipelining, sc_chunked, sc_continue, sc_statuses, sc_reset, timeout_late):
        f()
    th.join()


# ============================================================== demo
# A ~40 s capture for the dashboards, the alert rules and their end-to-end
# test: steady traffic to four API servers with every failure cause and
# every finding kind (what is in it: sc_demo below).
PUBLIC = "100.128.0.1"        # public unicast (just past CGNAT 100.64/10); never leaves the netns
DEMO_SECONDS = 36.0


def jwt_alg_none():
    h = b64url(json.dumps({"alg": "none", "typ": "JWT"}, separators=(",", ":")).encode())
    p = b64url(json.dumps({"sub": "user-99", "iat": NOW}, separators=(",", ":")).encode())
    return "%s.%s." % (h, p)


# valid for 20 h of capture time (a looping replay moves capture time on), not weak (< 24 h)
JWT_DEMO = jwt(NOW + 20 * 3600, NOW - 3600)
BEARER = "Authorization: Bearer " + JWT_DEMO


def demo_mix(rng):
    """(weight, host, method, target, headers, body) of the steady traffic."""
    n = lambda: rng.randint(1, 500)
    api, shop, ip = HOST, "shop.example.com", None
    return [
        (10, api, "GET", lambda: "/api/v1/users/%d" % n(), [BEARER], b""),
        (10, api, "GET", lambda: "/api/v1/products?page=%d" % rng.randint(1, 9), [], b""),
        (8, api, "GET", lambda: "/api/v1/products/%d" % n(), [], b""),
        (1, api, "GET", lambda: "/api/v1/products/", [], b""),
        (4, api, "POST", lambda: "/api/v1/orders", [BEARER], body_json(180)),
        (4, api, "GET", lambda: "/api/v1/orders/%d" % n(), [BEARER], b""),
        (1, api, "GET", lambda: "/api/v1/orders/%d?status=500" % n(), [BEARER], b""),
        (2, api, "GET", lambda: "/api/v1/reports/daily?status=503", [BEARER], b""),
        (1, api, "GET", lambda: "/api/v1/reports/daily?status=502", [BEARER], b""),
        (1, api, "GET", lambda: "/api/v1/reports/daily?status=504", [BEARER], b""),
        (1, api, "GET", lambda: "/api/v1/reports/daily", [BEARER], b""),
        (2, api, "GET", lambda: "/api/v1/admin/users?status=401", [], b""),
        (1, api, "GET", lambda: "/api/v1/admin/users?status=401",
         ["Authorization: Basic " + base64.b64encode(b"alice:wrong-password").decode()], b""),
        (2, api, "GET", lambda: "/api/v1/admin/stats?status=403", [BEARER], b""),
        (2, api, "GET", lambda: "/api/v1/me?status=401", ["Authorization: Bearer " + JWT_EXPIRED], b""),
        (3, api, "GET", lambda: "/api/v1/me", [BEARER], b""),
        (1, api, "GET", lambda: "/api/v1/me", ["Authorization: Bearer " + jwt_alg_none()], b""),
        (2, api, "GET", lambda: "/api/v1/quota?status=429", [BEARER], b""),
        (1, api, "POST", lambda: "/api/v1/orders?status=400", [BEARER], body_json(60)),
        (2, api, "GET", lambda: "/api/v1/notifications", [BEARER], b""),
        (1, api, "GET", lambda: "/api/v1/export?format=csv&api_key=k-0e1f2a3b4c", [], b""),
        (2, api, "GET", lambda: "/api/v0/users/%d" % n(), [], b""),
        (2, api, "GET", lambda: "/api/v1/profile", ["Cookie: session=s-7f3a9c2e41d8"], b""),
        (1, api, "POST", lambda: "/api/v1/login", [], body_json(80)),
        (2, api, "GET", lambda: "/api/v1/beta/recommendations", [BEARER], b""),
        (1, api, "GET", lambda: "/api/v1/legacy/report?status=410", [BEARER], b""),
        (1, api, "GET", lambda: rng.choice(["/wp-login.php", "/.env", "/api/v1/nope"]), [], b""),
        (1, api, "GET", lambda: "/api/v1/files/..%2f..%2fetc%2fpasswd", [], b""),
        (6, shop, "GET", lambda: "/api/v1/products", [], b""),
        (4, shop, "GET", lambda: "/api/v1/cart", ["Cookie: session=s-2b8d"], b""),
        (3, shop, "POST", lambda: "/api/v1/checkout", [BEARER], body_json(240)),
        (1, shop, "POST", lambda: "/api/v1/checkout?status=502", [BEARER], body_json(240)),
        (1, shop, "GET", lambda: "/api/v1/orders/%d?status=500" % n(), [BEARER], b""),
        (3, ip, "GET", lambda: "/api/v1/health", [], b""),
        (2, ip, "GET", lambda: "/api/v1/products/%d" % n(), [], b""),
        (3, "partner-api.example.net", "GET", lambda: "/api/v1/rates?currency=EUR",
         ["X-API-Key: pk-51f0c2d9"], b""),
    ]


class Pool:
    """One keep-alive connection per (address, host), reopened when closed."""

    def __init__(self):
        self.conns = {}

    def get(self, addr):
        c = self.conns.get(addr)
        if c is None:
            c = self.conns[addr] = Raw(addr=addr)
        return c

    def drop(self, addr):
        c = self.conns.pop(addr, None)
        if c:
            c.close()


def demo_steady(rng, until, mix, pace):
    pool = Pool()
    weights = [m[0] for m in mix]
    while time.time() < until:
        _, host, method, target, headers, body = rng.choices(mix, weights)[0]
        addr = PUBLIC if host == "partner-api.example.net" else SERVER
        c = pool.get(addr)
        res = raw_exchange(c, method, target(), host=host if host else SERVER, headers=headers,
                           body=body, note="demo steady traffic")
        if res["client_error"] or res["status"] is None:
            pool.drop(addr)
        time.sleep(pace * rng.uniform(0.5, 1.5))
    for a in list(pool.conns):
        pool.drop(a)


def demo_slow(rng, until):
    """The search route: slow enough to breach a 1 s latency objective."""
    c = Raw(timeout=10)
    while time.time() < until:
        raw_exchange(c, "GET", "/api/v1/search?q=w%d&delay_ms=%d" % (rng.randint(1, 99), rng.choice(
            [120, 300, 900, 1200, 1500, 1800])), headers=[BEARER], read_timeout=10, note="demo slow search")
        time.sleep(0.5)
    c.close()


def demo_timeout():
    c = Raw(timeout=45)
    raw_exchange(c, "GET", "/api/v1/reports/export?delay_ms=31500", headers=[BEARER], read_timeout=45,
                 note="answered after 31.5 s: a timeout at the default 30 s")
    c.close()


def demo_sprawl():
    """205 distinct 2xx routes on one server: endpoint_sprawl (limit 200)."""
    c = Raw()
    paths = ["/catalog/shelf-%03d" % i for i in range(205)]
    for i in range(0, len(paths), 15):
        raw_pipeline(c, [("HEAD", p, [], b"") for p in paths[i:i + 15]], note="demo sprawl")
    c.close()


def demo_malformed():
    """A bad Content-Length, then (after a good exchange) a line that is not a request line."""
    c = Raw()
    res = new_res("raw", c.conn, c.port, "GET", "/api/v1/products", HOST, note="malformed: bad Content-Length")
    seq = next_seq()
    t = time.time()
    try:
        c.sock.sendall(b"GET /api/v1/products HTTP/1.1\r\nHost: " + HOST.encode() +
                       b"\r\nContent-Length: twelve\r\n\r\n")
        c.read_response("GET", res)
    except (OSError, Closed) as e:
        res["client_error"] = err_name(e)
    finish(res, t, seq)
    c.close()
    c = Raw()
    raw_exchange(c, "GET", "/api/v1/products", note="before a malformed request line")
    res = new_res("raw", c.conn, c.port, "HELLO", "WORLD", None, note="malformed: not a request line")
    seq = next_seq()
    t = time.time()
    try:
        c.sock.sendall(b"HELLO WORLD\r\n\r\n")
        c.read_response("GET", res)
    except (OSError, Closed, ValueError, IndexError) as e:
        res["client_error"] = err_name(e)
    finish(res, t, seq)
    c.close()


def tls_client_hello_10(sni):
    """A TLS 1.0 ClientHello (no supported_versions): legacy_tls by what the client offers."""
    import struct
    name = sni.encode()
    sni_list = b"\x00" + struct.pack("!H", len(name)) + name
    ext = struct.pack("!HH", 0, len(sni_list) + 2) + struct.pack("!H", len(sni_list)) + sni_list
    ciphers = [0x002F, 0x0035, 0x000A]
    body = (b"\x03\x01" + bytes(range(32)) + b"\x00" + struct.pack("!H", 2 * len(ciphers)) +
            b"".join(struct.pack("!H", x) for x in ciphers) + b"\x01\x00" + struct.pack("!H", len(ext)) + ext)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def demo_tls(until):
    import ssl
    i = 0
    while time.time() < until:
        i += 1
        if i % 5 == 0:
            try:
                s = socket.create_connection((SERVER, 443), timeout=3)
                s.sendall(tls_client_hello_10("legacy.example.com"))
                s.recv(4096)
                s.close()
            except OSError:
                pass
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sni = "secure.example.com"
            if i % 2 == 0:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
                sni = "payments.example.com"
            try:
                s = ctx.wrap_socket(socket.create_connection((SERVER, 443), timeout=3), server_hostname=sni)
                s.sendall(("GET /api/v1/balance HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % sni).encode())
                while s.recv(65536):
                    pass
                s.close()
            except OSError:
                pass
        time.sleep(1.5)


def demo_other():
    try:
        s = socket.create_connection((SERVER, 5432), timeout=3)
        s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")     # PostgreSQL SSLRequest
        s.recv(16)
        s.close()
    except OSError:
        pass


def sc_demo():
    """~40 s of traffic for dashboards and alert tests (tests/captures/demo.pcap).

    Servers: api.example.com, shop.example.com and the IP literal 10.203.0.1
    (all 10.203.0.1:80), partner-api.example.net on the public address
    100.128.0.1:80, TLS on 10.203.0.1:443 (SNI secure.example.com TLS 1.3,
    payments.example.com TLS 1.2, legacy.example.com a TLS 1.0 ClientHello the
    server refuses), a non-HTTP service on :5432, and catalog.example.com with
    205 distinct 2xx routes (endpoint_sprawl).
    Two steady keep-alive clients draw from demo_mix (weights: every failure
    cause and per-exchange finding kind), a third calls /api/v1/search with
    120-1800 ms delays (p95 above 1 s), one request is answered after 31.5 s
    (timeout at the default 30 s), and at fixed times: resets (/reset), closes
    without a response (/close), malformed requests (a bad Content-Length,
    then a line that is not a request line), the sprawl burst and the
    non-HTTP connections. Deterministic choices (seeded), real timing.
    Expected differences from the truth: the client cannot see that its
    malformed requests are malformed (apitap: 4 malformed; truth: 2 with a
    200, 2 connection_reset).
    """
    import random
    t0 = time.time()
    until = t0 + DEMO_SECONDS
    rng = random.Random(6)
    mix = demo_mix(rng)
    threads = [threading.Thread(target=demo_timeout),
               threading.Thread(target=demo_steady, args=(random.Random(1), until, mix, 0.2)),
               threading.Thread(target=demo_steady, args=(random.Random(2), until, mix, 0.4)),
               threading.Thread(target=demo_slow, args=(random.Random(3), until)),
               threading.Thread(target=demo_tls, args=(until,))]
    for th in threads:
        th.start()
    events = [(3, demo_sprawl), (5, demo_other), (7, demo_malformed), (15, demo_other),
              (22, demo_malformed), (25, demo_other)]
    for at in (4, 14, 24, 30):
        events.append((at, lambda: (lambda c: (raw_exchange(c, "GET", "/reset", note="server resets"),
                                               c.close()))(Raw())))
    for at in (9, 19, 29):
        events.append((at, lambda: (lambda c: (raw_exchange(c, "POST", "/close", body=body_json(50),
                                                            note="server closes without a response"),
                                               c.close()))(Raw())))
    for at, f in sorted(events, key=lambda e: e[0]):
        time.sleep(max(0, t0 + at - time.time()))
        f()
    for th in threads:
        th.join()


SCENARIOS = {"keepalive": sc_keepalive, "pipelining": sc_pipelining, "chunked": sc_chunked,
             "continue": sc_continue, "statuses": sc_statuses, "reset": sc_reset,
             "timeout": sc_timeout, "mixed": sc_mixed, "demo": sc_demo}


def main():
    global SERVER, PORT, LOG, CURL_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--server", default=SERVER)
    ap.add_argument("--port", type=int, default=PORT)
    ap.add_argument("--log", required=True)
    a = ap.parse_args()
    SERVER, PORT = a.server, a.port
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # clean up the temp dir
    LOG = open(a.log, "a")
    with tempfile.TemporaryDirectory(prefix="apitap-rec-curl.") as d:
        CURL_DIR = d
        SCENARIOS[a.scenario]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
