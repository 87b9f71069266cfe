#!/usr/bin/env python3
"""Cross-check a truth file against tshark's reading of its capture.

  crosscheck.py DIR/SCENARIO.truth.json [more.truth.json ...]

This is a check of the recording, not a source of truth: the truth file is
written from the clients' own logs. For every client connection (client TCP
port) it compares, in order,
  * the requests tshark dissects (method, target, Host) with the truth's,
  * the final statuses tshark dissects (1xx left out) with the truth's
    non-null statuses, and the number of 1xx responses with the truth's interim,
  * the request and response body sizes (tshark's de-chunked http.file_data;
    skipped for frames holding several pipelined messages),
and reports differences. Exit 1 if any difference is not explained by a
known tshark blind spot: a request whose body never fully arrived (the
server reset the connection mid-body, or answered Expect: 100-continue with
a final status so the body was never sent) is not dissected by tshark, so
such a truth exchange (request_body_declared > request_body_bytes) may be
missing from tshark's list.
"""
import collections
import json
import os
import subprocess
import sys


def tshark_view(pcap):
    cmd = ["tshark", "-r", pcap, "-Y", "http", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=|",
           "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "http.request.method",
           "-e", "http.request.uri", "-e", "http.host", "-e", "http.response.code",
           "-e", "http.file_data"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    reqs = collections.defaultdict(list)
    finals = collections.defaultdict(list)
    interim = collections.Counter()
    req_body = collections.defaultdict(list)    # per port: body length or None (not comparable)
    resp_body = collections.defaultdict(list)
    for line in out.splitlines():
        sp, dp, meth, uri, host, code, data = (line.split("\t") + [""] * 7)[:7]
        if meth:
            ms, us, hs = meth.split("|"), uri.split("|"), host.split("|")
            hs += [""] * (len(ms) - len(hs))
            for m, u, h in zip(ms, us, hs):
                reqs[int(sp)].append((m, u, h or None))
                # the bodies are ASCII JSON, so tshark's text length is the byte length
                req_body[int(sp)].append(len(data) if len(ms) == 1 else None)
        if code:
            cs = [int(c) for c in code.split("|")]
            for c in cs:
                if 100 <= c < 200:
                    interim[int(dp)] += 1
                else:
                    finals[int(dp)].append(c)
                    resp_body[int(dp)].append(len(data) if len(cs) == 1 else None)
    return reqs, finals, interim, req_body, resp_body


def check(truth_path):
    t = json.load(open(truth_path))
    pcap = os.path.join(os.path.dirname(truth_path), t["pcap"])
    reqs, finals, interim, req_body, resp_body = tshark_view(pcap)
    by_port = collections.defaultdict(list)
    for x in t["exchanges"]:
        by_port[x["client_port"]].append(x)
    problems, notes = [], []
    for port, xs in sorted(by_port.items()):
        want_reqs = [(x["method"], x["target"], x["host"]) for x in xs]
        got_reqs = reqs.get(port, [])
        if want_reqs != got_reqs:
            blind = [(x["method"], x["target"], x["host"]) for x in xs
                     if (x.get("request_body_declared") or 0) > x["request_body_bytes"]]
            if [r for r in want_reqs if r not in blind] == got_reqs:
                notes.append("port %d: tshark does not dissect %s (body never completely sent)" % (port, blind))
            else:
                problems.append("port %d requests: truth %s, tshark %s" % (port, want_reqs, got_reqs))
        want_st = [x["status"] for x in xs if x["status"] is not None]
        if want_st != finals.get(port, []):
            problems.append("port %d statuses: truth %s, tshark %s" % (port, want_st, finals.get(port, [])))
        else:
            got = resp_body.get(port, [])
            want = [x["response_body_bytes"] for x in xs if x["status"] is not None]
            if any(g is not None and g != w for g, w in zip(got, want)):
                problems.append("port %d response body bytes: truth %s, tshark %s" % (port, want, got))
        if want_reqs == got_reqs:
            got = req_body.get(port, [])
            want = [x["request_body_bytes"] for x in xs]
            if any(g is not None and g != w for g, w in zip(got, want)):
                problems.append("port %d request body bytes: truth %s, tshark %s" % (port, want, got))
        want_int = sum(len(x["interim"]) for x in xs)
        if want_int != interim.get(port, 0):
            problems.append("port %d 1xx: truth %d, tshark %d" % (port, want_int, interim.get(port, 0)))
    extra = set(reqs) - set(by_port)
    if extra:
        problems.append("tshark sees requests from ports not in the truth: %s" % sorted(extra))
    n_t = sum(len(v) for v in reqs.values())
    print("%s: %d truth exchanges on %d connections; tshark: %d requests, %d final responses, %d 1xx -> %s"
          % (os.path.basename(truth_path), len(t["exchanges"]), len(by_port), n_t,
             sum(len(v) for v in finals.values()), sum(interim.values()), "OK" if not problems else "MISMATCH"))
    for n in notes:
        print("  note:", n)
    for p in problems:
        print("  MISMATCH:", p)
    return not problems


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ok = all([check(p) for p in sys.argv[1:]])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
