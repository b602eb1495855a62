"""Check every panel query of the Grafana dashboard against a live Prometheus.

    python tests/monitoring/dashboard_check.py --prometheus http://10.89.25.11:9090 \
        --dashboard roles/monitoring/files/tpserve-dashboard.json \
        --accelerator cpu --layout replicas --wait 120 --json reports/monitoring/check.json

Each panel's every target (`expr`) is sent to Prometheus' /api/v1/query with Grafana's
`$__rate_interval` / `$__interval` replaced by --rate-interval (any other `$variable` is a failure:
Prometheus could not evaluate it). A query passes when Prometheus answers `success` with at least
one series whose value is not NaN. Panels marked "(GPU only)" in their title are skipped with that
reason on a CPU cluster (their series are absent there, not zero), "(replicas layout)" ones with
layout tp_across_nodes; a skipped query is still sent once and Prometheus must accept it.
Queries that return nothing yet are retried until --wait seconds have passed (a rate needs two
scrapes).
Exit 0 when every checked query returned data, 1 otherwise; a table is printed either way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

GPU_MARK = "(GPU only)"
REPLICAS_MARK = "(replicas layout)"
GRAFANA_INTERVALS = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?")
OTHER_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass
class Check:
    panel: str
    ref: str
    expr: str
    query: str = ""
    status: str = "pending"  # ok | no data | error | skipped
    series: int = 0
    reason: str = ""


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows' nested panels included."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def skip_reason(title: str, accelerator: str, layout: str) -> str:
    if GPU_MARK in title and accelerator != "cuda":
        return (
            f"GPU only: series absent on a {accelerator} cluster (NVML / paged KV cache need CUDA)"
        )
    if REPLICAS_MARK in title and layout != "replicas":
        return f"replicas layout only: no front door with layout {layout}"
    return ""


def to_promql(expr: str, rate_interval: str) -> str:
    """Grafana's interval variables -> a fixed window; any other variable -> ValueError."""
    q = GRAFANA_INTERVALS.sub(rate_interval, expr)
    other = OTHER_VARIABLE.search(q)
    if other:
        raise ValueError(
            f"unknown dashboard variable ${other.group(1)} (only $__rate_interval, $__interval)"
        )
    return q


def plan(dashboard: dict, accelerator: str, layout: str, rate_interval: str) -> list[Check]:
    checks: list[Check] = []
    for p in panels(dashboard):
        if p.get("type") == "row":
            continue
        title = p.get("title", f"panel {p.get('id')}")
        targets = [t for t in p.get("targets", []) if t.get("expr")]
        if not targets:
            checks.append(
                Check(title, "-", "", status="error", reason="panel has no PromQL target")
            )
            continue
        reason = skip_reason(title, accelerator, layout)
        for t in targets:
            c = Check(title, t.get("refId", "?"), t["expr"])
            try:
                c.query = to_promql(t["expr"], rate_interval)
            except ValueError as exc:
                c.status, c.reason = "error", str(exc)
            else:
                if reason:
                    c.status, c.reason = "skipped", reason
            checks.append(c)
    return checks


def judge(c: Check, answer: dict) -> None:
    """Prometheus' JSON answer -> c.status / c.series / c.reason."""
    if answer.get("status") != "success":
        c.status, c.reason = (
            "error",
            f"{answer.get('errorType', '?')}: {answer.get('error', answer)}",
        )
        return
    result = answer.get("data", {}).get("result", [])
    if not isinstance(result, list):  # scalar / string: [ts, "value"]
        result = [{"value": result}]
    # A series whose value is NaN (e.g. a quantile over zero requests) is not data.
    values = [str(r.get("value", [0, ""])[1]) for r in result]
    c.series = sum(v.lower() != "nan" for v in values)
    if c.series:
        c.status, c.reason = "ok", ""
    elif result:
        c.status, c.reason = "no data", f"{len(result)} series, every value NaN"
    else:
        c.status, c.reason = "no data", "Prometheus returned no series"


def http_query(base: str, timeout: float) -> Callable[[str], dict]:
    def query(q: str) -> dict:
        url = f"{base.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as exc:  # 400/422: bad query, the body says why
            try:
                return json.load(exc)
            except ValueError:
                return {"status": "error", "errorType": f"HTTP {exc.code}", "error": str(exc)}
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            return {"status": "error", "errorType": "unreachable", "error": str(exc)}

    return query


def run(
    checks: list[Check],
    query: Callable[[str], dict],
    wait: float,
    delay: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Check]:
    """Query every pending check; retry those without data until `wait` seconds have passed."""
    deadline = clock() + wait
    # A skipped query is still sent once: Prometheus must accept it (it may return nothing).
    for c in checks:
        if c.status == "skipped" and c.query:
            answer = query(c.query)
            if answer.get("status") != "success":
                c.status = "error"
                c.reason = f"{answer.get('errorType', '?')}: {answer.get('error', answer)}"
            else:
                c.reason += " (query accepted by Prometheus)"
    while True:
        for c in checks:
            if c.status in ("pending", "no data") or (c.status == "error" and c.query):
                judge(c, query(c.query))
        todo = [c for c in checks if c.query and c.status not in ("ok", "skipped")]
        if not todo or clock() >= deadline:
            return checks
        sleep(delay)


def table(checks: list[Check]) -> str:
    rows = [f"{'status':<8} {'series':>6}  {'panel':<45} {'ref':<3} reason / query"]
    for c in checks:
        detail = c.reason or c.query
        rows.append(f"{c.status:<8} {c.series:>6}  {c.panel[:45]:<45} {c.ref:<3} {detail}")
    return "\n".join(rows)


def summary(checks: list[Check]) -> dict:
    by: dict[str, int] = {}
    for c in checks:
        by[c.status] = by.get(c.status, 0) + 1
    return {"ok": all(c.status in ("ok", "skipped") for c in checks), "by_status": by}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--prometheus", required=True, help="Prometheus base URL (the lab master's)")
    p.add_argument("--dashboard", required=True)
    p.add_argument("--accelerator", choices=["cpu", "cuda"], required=True)
    p.add_argument("--layout", choices=["tp_across_nodes", "replicas"], required=True)
    p.add_argument("--rate-interval", default="1m", help="value of $__rate_interval (default 1m)")
    p.add_argument(
        "--wait", type=float, default=120.0, help="seconds to keep retrying queries without data"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per query (s)")
    p.add_argument("--json", help="write the checks and the summary here")
    a = p.parse_args(argv)
    with open(a.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)
    checks = run(
        plan(dashboard, a.accelerator, a.layout, a.rate_interval),
        http_query(a.prometheus, a.timeout),
        a.wait,
    )
    s = summary(checks)
    print(table(checks))
    print(f"dashboard check: {s['by_status']} -> {'passed' if s['ok'] else 'FAILED'}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({**s, "checks": [asdict(c) for c in checks]}, f, indent=2)
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
