#!/usr/bin/env python3
"""Write apitap's Grafana dashboards (classic JSON) into this directory.

The JSON files are committed; edit this script and run it again
(`python3 dashboards/generate.py [OUT_DIR]`, default: this directory) rather
than editing them by hand (tests/dashboards.rs checks they agree).
Output is canonical (sorted keys, two-space indent, trailing newline), the
form `tests/dashboards.rs` checks survives a load/save round trip.

Conventions every panel follows (the lint in tests/dashboards.rs checks them):
the datasource is the `$datasource` variable; every selector carries
`job=~"$job", instance=~"$instance"`; every range is `[$__rate_interval]`;
every panel has a unit and a description; panel ids are unique.
Metric names and labels are the ones in docs/metrics.md.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "[$__rate_interval]"
SEL = 'job=~"$job", instance=~"$instance"'
SRV = SEL + ', server_address=~"$server"'
RT = SRV + ', http_route=~"$route"'
H = "http_server_request_duration_seconds"
F = "apitap_api_failures_total"
X = "apitap_exposure_findings_total"
UIDS = {"overview": "apitap-overview", "failures": "apitap-failures",
        "exposure": "apitap-exposure", "capture": "apitap-capture"}


# ----------------------------------------------------------------- variables
def var_datasource():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [],
            "refresh": 1, "regex": "", "skipUrlSync": False}


def var_query(name, label, query, all_value=None):
    v = {"name": name, "label": label, "type": "query", "datasource": DS,
         "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
         "current": {}, "hide": 0, "includeAll": True, "multi": True, "options": [],
         "refresh": 2, "regex": "", "sort": 1, "skipUrlSync": False}
    if all_value is not None:
        v["allValue"] = all_value
    return v


def variables(server=False, route=False):
    vs = [var_datasource(),
          var_query("job", "Job", "label_values(apitap_build_info, job)"),
          var_query("instance", "Instance", 'label_values(apitap_build_info{job=~"$job"}, instance)')]
    if server:
        vs.append(var_query("server", "Server", "label_values(%s_count{%s}, server_address)" % (H, SEL), ".*"))
    if route:
        vs.append(var_query("route", "Route", "label_values(%s_count{%s}, http_route)" % (H, SRV), ".*"))
    return vs


# ----------------------------------------------------------------- panels
class Layout:
    def __init__(self):
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def newline(self):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0


def target(expr, legend="", ref="A", instant=False, table=False):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "refId": ref}
    if table:
        t["format"] = "table"
    return t


def panel(lay, kind, title, desc, unit, targets, w=12, h=8, options=None, defaults=None,
          overrides=None, transformations=None, links=None):
    d = {"unit": unit}
    d.update(defaults or {})
    p = {"id": lay.next_id, "type": kind, "title": title, "description": desc, "datasource": DS,
         "gridPos": lay.place(w, h), "targets": targets,
         "fieldConfig": {"defaults": d, "overrides": overrides or []}, "options": options or {}}
    if transformations:
        p["transformations"] = transformations
    if links:
        p["fieldConfig"]["defaults"]["links"] = links       # data links: ${__data.fields.*}
    lay.next_id += 1
    return p


def ts(lay, title, desc, unit, targets, w=12, h=8, stack=False, bars=False, thresholds=None):
    custom = {"drawStyle": "bars" if bars else "line", "fillOpacity": 30 if (stack or bars) else 10,
              "lineWidth": 1, "showPoints": "never", "spanNulls": False,
              "stacking": {"group": "A", "mode": "normal" if stack else "none"}}
    defaults = {"custom": custom, "min": 0}
    if thresholds:
        custom["thresholdsStyle"] = {"mode": "line"}
        defaults["thresholds"] = thresholds
    return panel(lay, "timeseries", title, desc, unit, targets, w, h,
                 options={"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                                     "calcs": ["mean", "max", "lastNotNull"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}},
                 defaults=defaults)


def steps(*pairs):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in pairs]}


def stat(lay, title, desc, unit, targets, w=6, h=4, thresholds=None, mappings=None, decimals=None):
    defaults = {"thresholds": thresholds or steps((None, "green")), "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    return panel(lay, "stat", title, desc, unit, targets, w, h,
                 options={"colorMode": "background", "graphMode": "area", "justifyMode": "auto",
                          "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "textMode": "auto", "orientation": "auto"},
                 defaults=defaults)


def bars(lay, title, desc, unit, targets, w=12, h=8):
    return panel(lay, "bargauge", title, desc, unit, targets, w, h,
                 options={"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                          "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
                 defaults={"min": 0, "thresholds": steps((None, "green"), (0.1, "orange"), (1, "red"))})


def table(lay, title, desc, unit, targets, w=24, h=9, overrides=None, links=None, hide=()):
    tr = [{"id": "merge", "options": {}},
          {"id": "organize", "options": {"excludeByName": dict({"Time": True}, **{k: True for k in hide}),
                                         "indexByName": {}, "renameByName": {}}}]
    return panel(lay, "table", title, desc, unit, targets, w, h,
                 options={"showHeader": True, "cellHeight": "sm",
                          "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
                 overrides=overrides, transformations=tr, links=links)


def col(name, unit, display=None):
    props = [{"id": "unit", "value": unit}]
    if display:
        props.append({"id": "displayName", "value": display})
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def rate(metric, sel, by=None, extra=""):
    s = "%s{%s%s}" % (metric, sel, extra)
    inner = "rate(%s%s)" % (s, RI)
    return "sum by (%s) (%s)" % (by, inner) if by else "sum(%s)" % inner


def ratio(sel, by=None):
    return "%s\n/\n%s" % (rate(H + "_count", sel, by, ', error_type!=""'), rate(H + "_count", sel, by))


def quantile(q, sel, by=None):
    by = "le, " + by if by else "le"
    return "histogram_quantile(%s, %s)" % (q, rate(H + "_bucket", sel, by, ', error_type=""'))


def loss_expr():
    """The worst of the two loss signals per instance: frames the kernel or the
    interface dropped (apitap_capture_dropped_packets_total counts both), and
    stream bytes reassembly never saw."""
    drops = rate("apitap_capture_dropped_packets_total", SEL, "instance")
    pkts = rate("apitap_capture_packets_total", SEL, "instance")
    gaps = rate("apitap_tcp_missing_bytes_total", SEL, "instance")
    byts = rate("apitap_capture_bytes_total", SEL, "instance")
    return ('max(\n  label_replace(%s / clamp_min(%s + %s, 1e-9), "loss", "dropped frames", "", "")\n'
            '  or\n  label_replace(%s / clamp_min(%s, 1e-9), "loss", "tcp gaps", "", "")\n)'
            % (drops, pkts, drops, gaps, byts))


LOSS_STEPS = steps((None, "green"), (0.001, "orange"), (0.01, "red"))
RELIABLE_MAP = [
    {"type": "range", "options": {"from": 0.01, "to": 1000000,
                                  "result": {"index": 0, "color": "red",
                                             "text": "UNRELIABLE: capture loss >= 1 %, every number undercounts"}}},
    {"type": "range", "options": {"from": 0.001, "to": 0.01,
                                  "result": {"index": 1, "color": "orange",
                                             "text": "Some capture loss (0.1-1 %): numbers slightly low"}}},
    {"type": "range", "options": {"from": 0, "to": 0.001,
                                  "result": {"index": 2, "color": "green", "text": "Reliable (loss < 0.1 %)"}}},
    {"type": "special", "options": {"match": "nan", "result": {"index": 3, "color": "text",
                                                               "text": "No traffic captured"}}},
]


def reliability(lay, w=6, h=4):
    return stat(lay, "Are these numbers reliable?",
                "Worst capture loss of the selected apitap instances: frames dropped by the kernel or "
                "interface (libpcap statistics) as a share of frames, and TCP stream bytes that were never "
                "captured as a share of captured bytes. Above 1 % every other panel undercounts: fix the "
                "capture (see the Capture health dashboard and the ApitapCaptureLossHigh runbook) before "
                "trusting them.",
                "percentunit", [target(loss_expr(), "{{loss}}")], w, h, thresholds=LOSS_STEPS,
                mappings=RELIABLE_MAP)


def dashboard(key, title, desc, panels, templating, tags=()):
    return {
        "uid": UIDS[key], "title": title, "description": desc, "id": None, "version": 1,
        "schemaVersion": 39, "editable": True, "graphTooltip": 1, "timezone": "browser",
        "refresh": "30s", "time": {"from": "now-1h", "to": "now"}, "timepicker": {},
        "tags": ["apitap"] + list(tags), "fiscalYearStartMonth": 0, "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"type": "dashboards", "tags": ["apitap"], "asDropdown": False, "includeVars": True,
                   "keepTime": True, "title": "apitap", "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": templating},
        "panels": panels,
    }


def drill(uid, title):
    """A data link to dashboard uid, keeping this dashboard's variables and
    time range, with server and route taken from the clicked row."""
    return {"title": title, "targetBlank": False,
            "url": "/d/%s?${__url_time_range}&${datasource:queryparam}&${job:queryparam}"
                   "&${instance:queryparam}&var-server=${__data.fields.server_address:percentencode}"
                   "&var-route=${__data.fields.http_route:percentencode}" % uid}


# ----------------------------------------------------------------- overview
def overview():
    lay = Layout()
    P = []
    P.append(stat(lay, "Requests", "HTTP exchanges per second seen on the wire for the selected servers and routes "
                  "(http_server_request_duration_seconds_count).", "reqps",
                  [target(rate(H + "_count", RT))]))
    P.append(stat(lay, "Error ratio", "Share of exchanges with a failure cause (error_type not empty): any of "
                  "apitap's 14 causes, client-side ones (401, 404, 429, ...) included.", "percentunit",
                  [target(ratio(RT))], thresholds=steps((None, "green"), (0.01, "orange"), (0.05, "red"))))
    P.append(stat(lay, "p95 latency (successful)", "95th percentile of request first byte to response last "
                  "byte, successful exchanges only, estimated from the histogram buckets.", "s",
                  [target(quantile("0.95", RT))], thresholds=steps((None, "green"), (0.5, "orange"), (1, "red"))))
    P.append(reliability(lay))
    P.append(ts(lay, "Requests per server", "Exchanges per second by server_address (Host name, else IP).",
                "reqps", [target(rate(H + "_count", RT, "server_address"), "{{server_address}}")], stack=True))
    P.append(ts(lay, "Requests by status code", "Exchanges per second by final status code; an empty code is "
                "an exchange without a response (timeout, reset, malformed).", "reqps",
                [target(rate(H + "_count", RT, "http_response_status_code"), "{{http_response_status_code}}")],
                stack=True))
    P.append(ts(lay, "Error ratio per server", "Failed share of exchanges by server.", "percentunit",
                [target(ratio(RT, "server_address"), "{{server_address}}")],
                thresholds=steps((None, "green"), (0.05, "red"))))
    P.append(ts(lay, "Error ratio per route", "Failed share of exchanges by server and route; pick one in the "
                "Server and Route variables to drill down.", "percentunit",
                [target(ratio(RT, "server_address, http_route"), "{{server_address}} {{http_route}}")],
                thresholds=steps((None, "green"), (0.05, "red"))))
    P.append(ts(lay, "Latency percentiles (successful)", "p50, p90 and p99 of successful exchanges for the "
                "selection, from the histogram (buckets up to 60 s).", "s",
                [target(quantile("0.5", RT), "p50", "A"), target(quantile("0.9", RT), "p90", "B"),
                 target(quantile("0.99", RT), "p99", "C")], thresholds=steps((None, "green"), (1, "red"))))
    P.append(ts(lay, "p95 latency per route (successful)", "95th percentile by server and route; the 1 s line "
                "is the latency objective of the ApitapRouteLatencyHigh alert.", "s",
                [target(quantile("0.95", RT, "server_address, http_route"), "{{server_address}} {{http_route}}")],
                thresholds=steps((None, "green"), (1, "red"))))
    P.append(ts(lay, "Requests per route", "Exchanges per second by server and route (templated paths).",
                "reqps", [target(rate(H + "_count", RT, "server_address, http_route"),
                                 "{{server_address}} {{http_route}}")], w=24))
    by = "server_address, http_route"
    P.append(table(lay, "Routes (RED)", "Rate, errors and duration per server and route over the last "
                   "$__rate_interval. Click a row to open its failures.", "short",
                   [target(rate(H + "_count", RT, by), "", "A", True, True),
                    target(ratio(RT, by), "", "B", True, True),
                    target(quantile("0.95", RT, by), "", "C", True, True)],
                   overrides=[col("Value #A", "reqps", "req/s"), col("Value #B", "percentunit", "error ratio"),
                              col("Value #C", "s", "p95 (successful)")],
                   links=[drill(UIDS["failures"], "Failures of ${__data.fields.server_address}"
                                " ${__data.fields.http_route}")]))
    return dashboard("overview", "apitap / Overview",
                     "Requests, errors and latency (RED) of the HTTP APIs apitap sees, per server and route.",
                     P, variables(server=True, route=True), ["red"])


# ----------------------------------------------------------------- failures
def failures():
    lay = Layout()
    P = []
    P.append(stat(lay, "Failures", "Failed API calls per second (apitap_api_failures_total), every cause.",
                  "ops", [target(rate(F, RT))], thresholds=steps((None, "green"), (0.1, "orange"), (1, "red"))))
    P.append(stat(lay, "Server-side failures", "server_error and upstream_failure (5xx) per second.", "ops",
                  [target(rate(F, RT, None, ', cause=~"server_error|upstream_failure"'))],
                  thresholds=steps((None, "green"), (0.01, "orange"), (0.1, "red"))))
    P.append(stat(lay, "Timeouts and resets", "Exchanges that got no complete response (timeout, "
                  "connection_reset) per second.", "ops",
                  [target(rate(F, RT, None, ', cause=~"timeout|connection_reset"'))],
                  thresholds=steps((None, "green"), (0.01, "orange"), (0.1, "red"))))
    P.append(reliability(lay))
    P.append(ts(lay, "Failures by cause", "Failed calls per second by cause; the causes and their rules are in "
                "SPEC.md (first match wins, exactly one per failed exchange).", "ops",
                [target(rate(F, RT, "cause"), "{{cause}}")], w=16, stack=True))
    P.append(bars(lay, "Top failing routes", "The 10 server/route pairs with the most failures per second.",
                  "ops", [target("topk(10, %s)" % rate(F, RT, "server_address, http_route"),
                                 "{{server_address}} {{http_route}}", instant=True)], w=8))
    P.append(ts(lay, "401 vs 403 vs expired sessions", "Authentication and authorisation failures: "
                "auth_missing (401 without credentials), auth_rejected (401 with credentials), forbidden (403), "
                "session_expired (401/403 with a JWT past its exp).", "ops",
                [target(rate(F, RT, "cause", ', cause=~"auth_missing|auth_rejected|forbidden|session_expired"'),
                        "{{cause}}")], stack=True))
    P.append(ts(lay, "Timeouts and resets by route", "No complete response: timeout (none within the "
                "transaction timeout) and connection_reset (connection closed or reset first).", "ops",
                [target(rate(F, RT, "server_address, http_route, cause", ', cause=~"timeout|connection_reset"'),
                        "{{cause}} {{server_address}} {{http_route}}")]))
    P.append(ts(lay, "Endpoints gone", "endpoint_gone per second: 410, or 404 on a path that answered 2xx "
                "earlier in this run (a removed or broken endpoint that clients still call).", "ops",
                [target(rate(F, RT, "server_address, http_route", ', cause="endpoint_gone"'),
                        "{{server_address}} {{http_route}}")]))
    P.append(table(lay, "Endpoints gone since apitap started", "Routes that answered endpoint_gone, with the "
                   "count since the apitap instance started (or since the route's slot was last reused).",
                   "short", [target('sum by (server_address, http_route) (%s{%s, cause="endpoint_gone"})'
                                    % (F, RT), "", "A", True, True)],
                   w=12, h=8, overrides=[col("Value", "short", "gone answers")]))
    P.append(ts(lay, "Server-side failures by route", "server_error (5xx other than 502-504) and "
                "upstream_failure (502, 503, 504) per route.", "ops",
                [target(rate(F, RT, "server_address, http_route, cause", ', cause=~"server_error|upstream_failure"'),
                        "{{cause}} {{server_address}} {{http_route}}")]))
    P.append(ts(lay, "Other client-side failures", "not_found, bad_request, rate_limited, empty_response "
                "(200 with an empty body) and malformed (could not be parsed as HTTP/1.x).", "ops",
                [target(rate(F, RT, "cause", ', cause=~"not_found|bad_request|rate_limited|empty_response|malformed"'),
                        "{{cause}}")], stack=True))
    P.append(ts(lay, "Failures by server", "Failed calls per second by server.", "ops",
                [target(rate(F, RT, "server_address"), "{{server_address}}")], w=24, stack=True))
    return dashboard("failures", "apitap / Failures",
                     "Which API calls fail and why: failures by cause, route and server.",
                     P, variables(server=True, route=True), ["failures"])


# ----------------------------------------------------------------- exposure
def kind_ts(lay, title, desc, kinds, by="server_address", w=12):
    m = ', kind="%s"' % kinds if "|" not in kinds else ', kind=~"%s"' % kinds
    legend = " ".join("{{%s}}" % b.strip() for b in by.split(","))
    return ts(lay, title, desc, "ops", [target(rate(X, SRV, by, m), legend)], w=w)


def exposure():
    lay = Layout()
    P = []
    for sev, col_ in (("high", "red"), ("medium", "orange"), ("low", "yellow")):
        P.append(stat(lay, "%s-severity findings" % sev.capitalize(),
                      "Exposure findings of severity %s per second (every occurrence; the findings log folds "
                      "repeats, this counter does not)." % sev, "ops",
                      [target(rate(X, SRV, None, ', severity="%s"' % sev))], w=6,
                      thresholds=steps((None, "green"), (0.0001, col_))))
    P.append(stat(lay, "Plaintext share of connections", "Share of new TCP connections that carry plaintext "
                  "HTTP (protocol http) among http and tls ones.", "percentunit",
                  [target("%s\n/\nclamp_min(%s, 1e-9)" % (
                      rate("apitap_connections_total", SRV, None, ', protocol="http"'),
                      rate("apitap_connections_total", SRV, None, ', protocol=~"http|tls"')))],
                  w=6, thresholds=steps((None, "green"), (0.01, "orange"), (0.5, "red"))))
    P.append(ts(lay, "Findings by kind", "Exposure findings per second by kind (13 kinds; rules in SPEC.md).",
                "ops", [target(rate(X, SRV, "kind"), "{{kind}}")], stack=True))
    P.append(ts(lay, "Findings by severity", "Exposure findings per second by severity.", "ops",
                [target(rate(X, SRV, "severity"), "{{severity}}")], stack=True))
    P.append(table(lay, "Findings by server and kind since apitap started", "Every occurrence counted since "
                   "the apitap instance started; connection- and endpoint-level kinds (legacy_tls, "
                   "endpoint_sprawl, route_variants) are counted once per connection or server.", "short",
                   [target("sum by (server_address, kind, severity) (%s{%s})" % (X, SRV), "", "A", True, True)],
                   overrides=[col("Value", "short", "findings")]))
    P.append(ts(lay, "Plaintext vs TLS per server", "New TCP connections per second by server and protocol: "
                "http (plaintext, analysed), tls (encrypted, handshake read only), other (not HTTP, not "
                "analysed). For TLS the server is the SNI name.", "cps",
                [target(rate("apitap_connections_total", SRV, "server_address, protocol"),
                        "{{server_address}} {{protocol}}")], bars=True, stack=True))
    P.append(ts(lay, "TLS handshakes by version", "TLS handshakes per second by version (negotiated, else the "
                "highest the client offered).", "ops",
                [target(rate("apitap_tls_handshakes_total", SRV, "server_address, tls_version"),
                        "{{server_address}} {{tls_version}}")]))
    P.append(kind_ts(lay, "Raw-IP hosts", "ip_literal_host: requests whose Host header is an IP literal or "
                     "missing, by server (clients bypassing DNS names, scanners).", "ip_literal_host"))
    P.append(kind_ts(lay, "Public plaintext endpoints", "public_plaintext_endpoint: plaintext HTTP answered "
                     "by a publicly routable address.", "public_plaintext_endpoint"))
    P.append(kind_ts(lay, "Legacy TLS", "legacy_tls: connections whose TLS version (negotiated, or offered "
                     "when none was negotiated) is below 1.2.", "legacy_tls"))
    P.append(kind_ts(lay, "Weak JWTs", "weak_jwt: JWTs with alg none, no exp, or a lifetime over 24 h.",
                     "weak_jwt"))
    P.append(kind_ts(lay, "Credentials and sessions in cleartext", "cleartext_credentials, credentials_in_url, "
                     "cleartext_session_cookie and insecure_cookie by kind and server.",
                     "cleartext_credentials|credentials_in_url|cleartext_session_cookie|insecure_cookie",
                     "kind, server_address"))
    P.append(kind_ts(lay, "Deprecated endpoints", "deprecated_endpoint: responses with a Deprecation or Sunset "
                     "header, i.e. clients still calling an API that is going away.", "deprecated_endpoint"))
    P.append(kind_ts(lay, "Unsafe URLs and verbose errors", "unsafe_url (traversal, raw control bytes, double "
                     "encoding, over-long targets) and verbose_error (5xx bodies with stack traces).",
                     "unsafe_url|verbose_error", "kind, server_address"))
    P.append(table(lay, "Sprawl: routes per server", "Distinct routes that answered 2xx or 3xx per server "
                   "(series currently held), and the endpoint_sprawl and route_variants findings since apitap "
                   "started. Sprawl fires past classify.sprawl-limit (default 200).", "short",
                   [target('count by (server_address) (count by (server_address, http_route) (%s_count{%s, '
                           'http_response_status_code=~"[23].."}))' % (H, SRV), "", "A", True, True),
                    target('sum by (server_address) (%s{%s, kind="endpoint_sprawl"})' % (X, SRV), "", "B", True, True),
                    target('sum by (server_address) (%s{%s, kind="route_variants"})' % (X, SRV), "", "C", True, True)],
                   w=12, overrides=[col("Value #A", "short", "2xx/3xx routes"),
                                    col("Value #B", "short", "endpoint_sprawl"),
                                    col("Value #C", "short", "route_variants")]))
    return dashboard("exposure", "apitap / Exposure",
                     "Which endpoints are exposed: findings by kind and severity, plaintext vs TLS, raw-IP "
                     "hosts, public plaintext, legacy TLS, weak JWTs, deprecated endpoints, sprawl.",
                     P, variables(server=True), ["security"])


# ----------------------------------------------------------------- capture
def capture():
    lay = Layout()
    P = []
    P.append(reliability(lay, w=12, h=5))
    P.append(stat(lay, "Capture loss", "The same worst-case loss ratio as a number (dropped frames and TCP "
                  "gaps).", "percentunit", [target(loss_expr(), "{{loss}}")], w=6, h=5,
                  thresholds=LOSS_STEPS, decimals=2))
    P.append(stat(lay, "Active TCP flows", "TCP connections apitap tracks now (apitap_tcp_flows_active).",
                  "short", [target("sum(apitap_tcp_flows_active{%s})" % SEL)], w=6, h=5))
    P.append(ts(lay, "Packets", "Frames per second the capture delivered (interface \"file\" in read mode).",
                "pps", [target(rate("apitap_capture_packets_total", SEL, "instance, interface"),
                               "{{instance}} {{interface}}")]))
    P.append(ts(lay, "Bytes", "Bytes per second of the captured frames.", "Bps",
                [target(rate("apitap_capture_bytes_total", SEL, "instance, interface"),
                        "{{instance}} {{interface}}")]))
    drops = rate("apitap_capture_dropped_packets_total", SEL, "instance, interface")
    if_drops = rate("apitap_capture_interface_dropped_packets_total", SEL, "instance, interface")
    P.append(ts(lay, "Kernel and interface drops", "Frames per second lost before apitap read them (live "
                "capture only). kernel: apitap's capture buffer was full (apitap short of CPU, or raise "
                "capture.buffer-size); interface: the network interface could not hand them to the host "
                "(its receive ring; nothing apitap can fix). Builds without the interface split show "
                "everything as kernel.", "pps",
                [target("(\n%s\n-\n%s\n)\nor\n%s" % (drops, if_drops, drops),
                        "{{instance}} {{interface}} kernel"),
                 target(if_drops, "{{instance}} {{interface}} interface", "B")]))
    P.append(ts(lay, "TCP gaps", "Stream bytes per second that were never captured and that reassembly "
                "skipped (apitap_tcp_missing_bytes_total): exchanges touched by them are uncertain.", "Bps",
                [target(rate("apitap_tcp_missing_bytes_total", SEL, "instance"), "{{instance}}")]))
    P.append(ts(lay, "Loss ratio", "Dropped frames / frames and missing bytes / captured bytes; above the 1 % "
                "line the other dashboards undercount.", "percentunit",
                [target(loss_expr(), "{{loss}}")], thresholds=steps((None, "green"), (0.01, "red"))))
    P.append(ts(lay, "HTTP parse errors", "Bytes per second that could not be framed as HTTP/1.x, by "
                "direction (malformed traffic, or loss in a header block).", "Bps",
                [target(rate("apitap_http_parse_errors_total", SEL, "instance, direction"),
                        "{{instance}} {{direction}}")]))
    P.append(ts(lay, "Active TCP flows", "TCP connections being tracked over time.", "short",
                [target("sum by (instance) (apitap_tcp_flows_active{%s})" % SEL, "{{instance}}")]))
    P.append(ts(lay, "Label overflow", "Updates folded into _other per second, by the bound that folded them "
                "(server_address, server_port, http_route, tls_version, series). Raise the bound or add "
                "route patterns when this grows.", "ops",
                [target(rate("apitap_label_overflow_total", SEL, "instance, label"), "{{instance}} {{label}}")]))
    P.append(ts(lay, "Series budget used", "Bounded series held now as a share of the global series budget "
                "(apitap_metrics_series / apitap_metrics_series_limit).", "percentunit",
                [target("sum by (instance) (apitap_metrics_series{%s})\n/\nsum by (instance) "
                        "(apitap_metrics_series_limit{%s})" % (SEL, SEL), "{{instance}}")],
                thresholds=steps((None, "green"), (0.8, "red"))))
    P.append(ts(lay, "CPU", "CPU used by apitap (1 = one core).", "percentunit",
                [target("sum by (instance) (rate(process_cpu_seconds_total{%s}%s))" % (SEL, RI), "{{instance}}")]))
    P.append(ts(lay, "Resident memory", "Resident memory of the apitap process.", "bytes",
                [target("sum by (instance) (process_resident_memory_bytes{%s})" % SEL, "{{instance}}")]))
    P.append(table(lay, "Instances", "The apitap builds behind the selection (apitap_build_info).", "short",
                   [target("apitap_build_info{%s}" % SEL, "", "A", True, True)], hide=("Value", "__name__")))
    return dashboard("capture", "apitap / Capture health",
                     "Is apitap seeing everything? Packets, bytes, drops, TCP gaps, parse errors, flows, label "
                     "overflow; when loss is high, every other dashboard undercounts.",
                     P, variables(), ["capture"])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE       # tests write to a temp dir
    for key, fn in (("overview", overview), ("failures", failures), ("exposure", exposure),
                    ("capture", capture)):
        path = os.path.join(out, "apitap-%s.json" % key)
        with open(path, "w") as f:
            f.write(json.dumps(fn(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        print(path)


if __name__ == "__main__":
    main()
