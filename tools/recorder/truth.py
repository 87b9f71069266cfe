#!/usr/bin/env python3
"""Merge the client JSONL log(s) of one recording into SCENARIO.truth.json.

The truth comes only from what the clients sent and received (client.py's
log). Nothing here reads the capture's contents. `expected_failure` is the
SPEC.md failure table applied to those client-side facts, assuming apitap
runs with --transaction-timeout equal to "transaction_timeout_s" below.

Usage: truth.py --scenario S --log client.jsonl [--log more.jsonl] --out S.truth.json
                --pcap S.pcap [--tcpdump-stderr FILE] [--transaction-timeout SECS]
                [--server 10.203.0.1:80]
"""
import argparse
import collections
import ipaddress
import json
import os
import re
import subprocess
import sys

FIELDS_DOC = {
    "seq": "order in which the client sent the request (1-based)",
    "tool": "curl or raw (Python socket)",
    "conn": "client connection number (1-based, in order of first use) in this recording",
    "client_port": "client TCP source port of that connection (server is 10.203.0.1:80)",
    "method": "request method as sent",
    "target": "request-target exactly as sent (not redacted)",
    "host": "Host header value as sent, null if none",
    "status": "final status received by the client, null if none",
    "interim": "1xx interim statuses received before the final one",
    "client_error": "null, reset (ECONNRESET/EPIPE), closed (EOF before a complete response), timeout (client gave up)",
    "request_body_bytes": "request body bytes the client sent (de-chunked)",
    "request_body_declared": "Content-Length the request declared (null: no Content-Length, e.g. chunked or GET); larger than request_body_bytes when the body was never completely sent",
    "response_body_bytes": "response body bytes the client received (de-chunked, not decoded)",
    "response_body_empty": "response body empty or JSON {} [] null (null without response)",
    "credentials": "the request carried Authorization, an API-key header, a Cookie or a credential query parameter",
    "jwt_expired": "the request carried a JWT whose exp is in the past",
    "chunked_request": "request body sent with Transfer-Encoding: chunked",
    "chunked_response": "response received with Transfer-Encoding: chunked",
    "t_send": "client clock (epoch s) just before the request was written (curl: before the curl process started)",
    "t_end": "client clock (epoch s) when the response was complete or the error seen",
    "expected_failure": "SPEC.md failure cause derived from the fields above (see transaction_timeout_s)",
    "note": "what the exchange is about",
}


def server_address(host, server_ip):
    """SPEC: server_address is the Host header when it is a name, else the IP."""
    if not host:
        return server_ip
    h = host.lower()
    h = re.sub(r":\d+$", "", h) if not h.startswith("[") else h.split("]")[0].strip("[")
    try:
        ipaddress.ip_address(h)
        return server_ip
    except ValueError:
        return h


def expected_failure(x, tt, seen_2xx, server_ip, port):
    dur = x["t_end"] - x["t_send"]
    st = x["status"]
    if st is None:
        return "timeout" if dur > tt else "connection_reset"
    if dur > tt:
        return "timeout"
    if st in (401, 403) and x["jwt_expired"]:
        return "session_expired"
    if st == 401:
        return "auth_rejected" if x["credentials"] else "auth_missing"
    if st == 403:
        return "forbidden"
    key = (server_address(x["host"], server_ip), port, x["target"].split("?")[0])
    if st == 410 or (st == 404 and "?" not in x["target"] and key in seen_2xx):
        return "endpoint_gone"
    if st == 404:
        return "not_found"
    if st == 429:
        return "rate_limited"
    if 400 <= st < 500:
        return "bad_request"
    if st in (502, 503, 504):
        return "upstream_failure"
    if st >= 500:
        return "server_error"
    if st == 200 and x["method"] == "GET" and x["response_body_empty"]:
        return "empty_response"
    return None


def tcpdump_stats(path):
    out = {}
    if path and os.path.exists(path):
        for line in open(path):
            m = re.match(r"(\d+) packets? (captured|received by filter|dropped by kernel|dropped by interface)", line.strip())
            if m:
                out[m.group(2).replace(" ", "_")] = int(m.group(1))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--log", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pcap", required=True)
    ap.add_argument("--tcpdump-stderr")
    ap.add_argument("--transaction-timeout", type=float, default=30.0)
    ap.add_argument("--server", default="10.203.0.1:80")
    a = ap.parse_args()
    server_ip, port = a.server.rsplit(":", 1)
    port = int(port)

    xs = []
    for p in a.log:
        with open(p) as f:
            xs += [json.loads(l) for l in f if l.strip()]
    xs.sort(key=lambda x: x["seq"])
    for i, x in enumerate(xs, 1):
        x["seq"] = i
    seen_2xx = set()
    order = ["seq", "conn", "client_port", "tool", "method", "target", "host", "status", "interim",
             "client_error", "request_body_bytes", "request_body_declared", "response_body_bytes", "response_body_empty",
             "credentials", "jwt_expired", "chunked_request", "chunked_response",
             "expected_failure", "t_send", "t_end", "note"]
    out_x = []
    for x in xs:
        x["expected_failure"] = expected_failure(x, a.transaction_timeout, seen_2xx, server_ip, port)
        if x["status"] is not None and 200 <= x["status"] < 300:
            seen_2xx.add((server_address(x["host"], server_ip), port, x["target"].split("?")[0]))
        rec = {k: x.get(k) for k in order}
        for k in ("curl_exit", "curl_errormsg"):
            if k in x:
                rec[k] = x[k]
        out_x.append(rec)

    C = collections.Counter
    counts = {
        "exchanges": len(out_x),
        "with_response": sum(1 for x in out_x if x["status"] is not None),
        "without_response": sum(1 for x in out_x if x["status"] is None),
        "connections": len({x["client_port"] for x in out_x if x["client_port"]}),
        "interim_responses": sum(len(x["interim"]) for x in out_x),
        "request_body_bytes": sum(x["request_body_bytes"] for x in out_x),
        "response_body_bytes": sum(x["response_body_bytes"] for x in out_x),
        "by_status": dict(sorted(C(str(x["status"]) for x in out_x).items())),
        "by_method": dict(sorted(C(x["method"] for x in out_x).items())),
        "by_client_error": dict(sorted(C(str(x["client_error"]) for x in out_x).items())),
        "by_expected_failure": dict(sorted(C(str(x["expected_failure"]) for x in out_x).items())),
    }
    try:
        curl_v = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        curl_v = None
    truth = {
        "scenario": a.scenario,
        "pcap": os.path.basename(a.pcap),
        "server": a.server,
        "client_ip": "10.203.0.2",
        "transaction_timeout_s": a.transaction_timeout,
        "source": "client-side logs of tools/recorder/client.py (curl -w/-D and raw sockets); not derived from the capture",
        "tcpdump": tcpdump_stats(a.tcpdump_stderr),
        "tools": {"curl": curl_v, "python": sys.version.split()[0]},
        "counts": counts,
        "fields": FIELDS_DOC,
        "exchanges": out_x,
    }
    with open(a.out, "w") as f:
        json.dump(truth, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
