#!/usr/bin/env python3
"""Evaluates every PromQL expression of the chart's Grafana dashboard and alert rules on a
real Prometheus (its HTTP API), which is scraping real Portcullis processes.

usage: promql_check.py --prometheus URL --dashboard portcullis.json --rules rules.json
                       [--var namespace=portcullis-system] [--wait 40]

- Each dashboard target, with Grafana's variables replaced by concrete values, must parse
  (status "success") and return a non-empty result with at least one number (not only
  NaN, which a ratio of two idle rates gives): so every metric and label it names really
  exists and the panel shows something. Expressions not there yet are retried until
  --wait seconds have passed.
- Each template variable's label_values(metric, label) must find the label on the metric.
- Each alert rule (rules.json: the chart's rendered PrometheusRule spec, as JSON) must
  parse, and Prometheus, which loaded the same file, must report it healthy.
Standard library only.
"""

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request

# Grafana's built-in variables, as Grafana would fill them for a 1 s scrape interval and a
# short time range.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "5s",
    "__range": "5m",
}


def api(base, path, params=None):
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 on a parse error carries a JSON body
        return json.load(e)


def query(base, expr):
    return api(base, "/api/v1/query", {"query": expr})


def substitute(expr, variables):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"no value for Grafana variable ${name} in: {expr}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def finite(result):
    for s in result:
        vals = [s["value"]] if "value" in s else s.get("values", [])
        if any(not math.isnan(float(v[1])) for v in vals):
            return True
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--var", action="append", default=[], help="name=value for a template variable")
    ap.add_argument("--wait", type=float, default=40)
    a = ap.parse_args()

    variables = dict(BUILTINS)
    variables.update(v.split("=", 1) for v in a.var)
    with open(a.dashboard) as f:
        dash = json.load(f)
    failures = []

    # Template variables: label_values(metric{...}, label).
    variables_checked = 0
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
        if not m:
            failures.append(f"variable ${v['name']}: cannot read {q!r}")
            continue
        variables_checked += 1
        expr = substitute(f"count by ({m.group(2)}) ({m.group(1)})", variables)
        r = query(a.prometheus, expr)
        ok = r.get("status") == "success" and any(m.group(2) in s["metric"] for s in r["data"]["result"])
        print(f"{'ok  ' if ok else 'FAIL'} variable ${v['name']}: {expr}")
        if not ok:
            failures.append(f"variable ${v['name']}: {expr} -> {r}")

    # Dashboard panels (rows may nest panels).
    targets = []
    for p in dash["panels"]:
        for panel in [p] + p.get("panels", []):
            for t in panel.get("targets", []):
                targets.append((panel["title"], t["expr"]))
    pending = {}
    for title, raw in targets:
        expr = substitute(raw, variables)
        r = query(a.prometheus, expr)
        if r.get("status") != "success":
            failures.append(f"dashboard {title!r}: does not parse: {r.get('error')}\n  {expr}")
            print(f"FAIL dashboard {title!r}: {r.get('error')}")
            continue
        pending[(title, expr)] = r
    deadline = time.monotonic() + a.wait
    while True:
        empty = {k: r for k, r in pending.items() if not finite(r["data"]["result"])}
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
        for k in empty:
            pending[k] = query(a.prometheus, k[1])
    for (title, expr), r in pending.items():
        res = r["data"]["result"]
        if not finite(res):
            why = "only NaN" if res else "no data"
            failures.append(f"dashboard {title!r}: {why}\n  {expr}")
            print(f"FAIL dashboard {title!r}: {why}: {expr}")
        else:
            print(f"ok   dashboard {title!r}: {len(res)} series")

    # Alert rules: each expression parses and Prometheus evaluates the loaded rule without error.
    with open(a.rules) as f:
        groups = json.load(f)["groups"]
    want = {}
    for g in groups:
        for rule in g["rules"]:
            name = rule.get("alert") or rule.get("record")
            want[name] = rule["expr"]
            r = query(a.prometheus, rule["expr"])
            ok = r.get("status") == "success"
            state = f"{len(r['data']['result'])} series now" if ok else r.get("error")
            print(f"{'ok  ' if ok else 'FAIL'} alert {name}: {state}")
            if not ok:
                failures.append(f"alert {name}: does not parse: {r.get('error')}")
    deadline = time.monotonic() + 15
    while True:
        loaded = {}
        for g in api(a.prometheus, "/api/v1/rules")["data"]["groups"]:
            for rule in g["rules"]:
                loaded[rule["name"]] = rule
        if all(loaded.get(n, {}).get("health") == "ok" for n in want) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for n in want:
        rule = loaded.get(n)
        if rule is None:
            failures.append(f"alert {n}: not loaded by Prometheus")
        elif rule.get("health") != "ok":
            failures.append(f"alert {n}: health {rule.get('health')}: {rule.get('lastError')}")
        else:
            print(f"ok   alert {n}: loaded by Prometheus, health ok, state {rule.get('state')}")

    for f in failures:
        print(f"FAIL: {f}")
    total = variables_checked + len(targets) + len(want)
    print(f"{total - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures or not targets or not want else 0)


if __name__ == "__main__":
    main()
