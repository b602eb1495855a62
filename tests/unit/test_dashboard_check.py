"""tests/monitoring/dashboard_check.py (dashboard vs Prometheus) and the dashboard itself."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO

# A test-side script, not a package: imported from its path (registered first: dataclasses look
# their module up in sys.modules).
_spec = importlib.util.spec_from_file_location(
    "dashboard_check", REPO / "tests" / "monitoring" / "dashboard_check.py"
)
assert _spec is not None and _spec.loader is not None
dc = importlib.util.module_from_spec(_spec)
sys.modules["dashboard_check"] = dc
_spec.loader.exec_module(dc)

DASHBOARD = REPO / "roles" / "monitoring" / "files" / "tpserve-dashboard.json"


def _dash(*panels: dict) -> dict:
    return {"panels": list(panels)}


def _panel(title: str, *exprs: str) -> dict:
    return {
        "title": title,
        "type": "timeseries",
        "targets": [{"refId": chr(65 + i), "expr": e} for i, e in enumerate(exprs)],
    }


def test_rate_interval_is_replaced_and_other_variables_fail() -> None:
    assert dc.to_promql("rate(x[$__rate_interval])", "1m") == "rate(x[1m])"
    assert dc.to_promql("rate(x[${__interval}])", "30s") == "rate(x[30s])"
    with pytest.raises(ValueError, match=r"\$job"):
        dc.to_promql('up{job="$job"}', "1m")


def test_plan_skips_gpu_panels_on_cpu_and_front_door_panels_without_replicas() -> None:
    d = _dash(
        _panel("Requests/s", "rate(a[$__rate_interval])"),
        _panel("KV cache (GPU only)", "kv"),
        _panel("Front door (replicas layout)", "haproxy_up", "haproxy_sessions"),
        {"type": "row", "title": "row", "panels": [_panel("nested", "n")]},
        {"title": "empty", "type": "timeseries", "targets": []},
    )
    checks = dc.plan(d, "cpu", "tp_across_nodes", "1m")
    by = {(c.panel, c.ref): c for c in checks}
    assert by[("Requests/s", "A")].query == "rate(a[1m])"
    assert by[("KV cache (GPU only)", "A")].status == "skipped"
    assert by[("KV cache (GPU only)", "A")].query == "kv"  # still sent once, must parse
    assert "GPU only" in by[("KV cache (GPU only)", "A")].reason
    assert [by[("Front door (replicas layout)", r)].status for r in "AB"] == ["skipped", "skipped"]
    assert by[("nested", "A")].query == "n"
    assert by[("empty", "-")].status == "error"
    # On CUDA with replicas nothing is skipped.
    assert all(c.status != "skipped" for c in dc.plan(d, "cuda", "replicas", "1m"))


def test_judge() -> None:
    c = dc.Check("p", "A", "e", query="e")
    ok = {"metric": {}, "value": [1.0, "0.25"]}
    nan = {"metric": {}, "value": [1.0, "NaN"]}
    dc.judge(c, {"status": "success", "data": {"resultType": "vector", "result": [ok, ok, nan]}})
    assert (c.status, c.series) == ("ok", 2)
    dc.judge(c, {"status": "success", "data": {"resultType": "vector", "result": [nan]}})
    assert c.status == "no data" and "NaN" in c.reason
    dc.judge(c, {"status": "success", "data": {"resultType": "vector", "result": []}})
    assert (c.status, c.series) == ("no data", 0)
    dc.judge(c, {"status": "error", "errorType": "bad_data", "error": "parse error"})
    assert c.status == "error" and "parse error" in c.reason


def test_run_retries_until_data_or_deadline() -> None:
    now = [0.0]
    calls: list[str] = []
    answers = {"late": 2}  # returns data on the 3rd query

    def query(q: str) -> dict:
        calls.append(q)
        if q == "late" and answers["late"] > 0:
            answers["late"] -= 1
            return {"status": "success", "data": {"result": []}}
        if q == "never":
            return {"status": "success", "data": {"result": []}}
        return {"status": "success", "data": {"result": [{"value": [0, "1"]}]}}

    def sleep(s: float) -> None:
        now[0] += s

    checks = [dc.Check("a", "A", "x", query="x"), dc.Check("b", "A", "late", query="late")]
    dc.run(checks, query, wait=60, delay=5, clock=lambda: now[0], sleep=sleep)
    assert [c.status for c in checks] == ["ok", "ok"]
    assert calls.count("x") == 1 and calls.count("late") == 3

    checks = [
        dc.Check("c", "A", "never", query="never"),
        dc.Check("d", "A", "x", query="x", status="skipped"),
    ]
    dc.run(checks, query, wait=12, delay=5, clock=lambda: now[0], sleep=sleep)
    assert checks[0].status == "no data"
    assert checks[1].status == "skipped" and "accepted by Prometheus" in checks[1].reason
    s = dc.summary(checks)
    assert s == {"ok": False, "by_status": {"no data": 1, "skipped": 1}}


def test_a_skipped_query_must_still_parse() -> None:
    def query(q: str) -> dict:
        return {"status": "error", "errorType": "bad_data", "error": "1:5: parse error"}

    checks = [
        dc.Check("gpu (GPU only)", "A", "sum(", query="sum(", status="skipped", reason="GPU only")
    ]
    dc.run(checks, query, wait=0, delay=1, clock=lambda: 0.0, sleep=lambda s: None)
    assert checks[0].status == "error" and "parse error" in checks[0].reason
    assert dc.summary(checks)["ok"] is False


# --- the dashboard in the repository ---


def _repo_panels() -> list[dict]:
    return [p for p in dc.panels(json.loads(DASHBOARD.read_text())) if p.get("type") != "row"]


def test_dashboard_every_panel_has_valid_queries() -> None:
    ps = _repo_panels()
    assert len({p["id"] for p in ps}) == len(ps), "panel ids must be unique"
    for p in ps:
        exprs = [t.get("expr", "") for t in p.get("targets", [])]
        assert exprs and all(exprs), f"{p['title']}: every target needs a PromQL expr"
        for e in exprs:
            dc.to_promql(e, "1m")  # no variable Prometheus could not evaluate
            assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), (
                f"{p['title']}: {e}"
            )


def test_dashboard_marks_gpu_and_front_door_panels() -> None:
    """Series that only exist on CUDA (NVML, paged KV cache) or behind the front door are marked,
    so the lab check skips them with a reason instead of failing; everything else is checked."""
    for p in _repo_panels():
        exprs = " ".join(t["expr"] for t in p["targets"])
        gpu = "tpserve_gpu_" in exprs or "tpserve_kv_cache_blocks" in exprs
        assert gpu == (dc.GPU_MARK in p["title"]), p["title"]
        assert ("haproxy_" in exprs) == (dc.REPLICAS_MARK in p["title"]), p["title"]


def test_dashboard_covers_the_issue_panels() -> None:
    exprs = " ".join(t["expr"] for p in _repo_panels() for t in p["targets"])
    for series in (
        "tpserve_requests_total",
        "tpserve_time_to_first_token_seconds_bucket",
        "tpserve_inter_token_latency_seconds_bucket",
        "tpserve_queue_depth",
        "tpserve_batch_size_sum",
        "tpserve_kv_cache_blocks",
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "haproxy_backend_active_servers",
        "haproxy_server_current_sessions",
    ):
        assert series in exprs, series
