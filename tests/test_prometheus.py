"""A real Prometheus (Debian's 2.42) scrapes a real `pycanary api` with a viewer token and
answers queries on pycanary series with the values Redis holds; a scrape without the token is
refused; the shipped alert rules load and evaluate. Without the binary the test skips, unless
PYCANARY_REQUIRE_PROMETHEUS=1 (CI) makes that a failure."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

from tests.api_server import running_api
from tests.dashboard import expressions, load, promql
from tests.observed import QUEUE, observed_deployment
from tests.prometheus_tools import PrometheusProcess, binary

TOKEN = "viewer-token-for-prometheus-0123"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "prometheus"


def config(target: str) -> str:
    return f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: pycanary
    authorization: {{type: Bearer, credentials: "{TOKEN}"}}
    static_configs: [{{targets: ["{target}"]}}]
  - job_name: pycanary-no-token
    static_configs: [{{targets: ["{target}"]}}]
"""


def value(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_prometheus_scrapes_the_api_and_answers_queries(real_conn, tmp_path: Path) -> None:
    binary("prometheus")  # skip (or fail under CI) before starting anything
    seen = observed_deployment(real_conn)
    with running_api(real_conn.keys.prefix, tokens=f"viewer:{TOKEN}",
                     log=tmp_path / "api.log") as base:
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        shutil.copy(EXAMPLES / "alerts.yml", workdir / "alerts.yml")
        prom = PrometheusProcess(workdir, config(base.removeprefix("http://")))
        try:
            split = prom.wait_for(
                f'canary_traffic_split_percentage{{job="pycanary",queue="{QUEUE}"}}',
                lambda r: len(r) == 2)
            by_lane = {s["metric"]["lane"]: float(s["value"][1]) for s in split}
            assert by_lane == {"canary": 50.0, "stable": 50.0}
            assert {s["metric"]["deployment_id"] for s in split} == {seen.deployment_id}

            # the job counts Redis holds, through Prometheus
            for lane, version in (("stable", "v1"), ("canary", "v3")):
                ok = prom.query(f'pycanary_jobs_processed_total{{queue="{QUEUE}",'
                                f'lane="{lane}",version="{version}",outcome="ok"}}')
                assert value(ok) == seen.jobs[lane] - seen.failing[lane]
                dead = prom.query(f'pycanary_jobs_processed_total{{queue="{QUEUE}",'
                                  f'lane="{lane}",outcome="dead"}}')
                assert value(dead) == seen.failing[lane]
            assert value(prom.query(f'pycanary_dlq_length{{queue="{QUEUE}"}}')) == sum(
                seen.failing.values())
            assert value(prom.query(
                f'canary_rollbacks_total{{queue="{QUEUE}",reason="manual"}}')) == 1
            assert value(prom.query("pycanary_controller_leader_epoch")) == seen.leader.epoch
            # a histogram Prometheus can take a quantile of
            p95 = prom.query(f'histogram_quantile(0.95, sum by (le, lane) '
                             f'(pycanary_job_duration_seconds_bucket{{queue="{QUEUE}"}}))')
            assert {s["metric"]["lane"] for s in p95} == {"stable", "canary"}
            assert all(float(s["value"][1]) > 0 for s in p95)

            # /metrics needs the token: the scrape without one fails
            up = {s["metric"]["job"]: float(s["value"][1])
                  for s in prom.wait_for("up", lambda r: len(r) == 2)}
            assert up == {"pycanary": 1.0, "pycanary-no-token": 0.0}
            targets = prom.api("targets")["activeTargets"]
            errors = {t["labels"]["job"]: t["lastError"] for t in targets}
            assert "401" in errors["pycanary-no-token"], errors
            assert errors["pycanary"] == ""

            # the shipped rules load and evaluate without errors against real series
            groups = prom.wait_for_rules()
            assert {g["name"] for g in groups} == {"pycanary-canary", "pycanary-controller",
                                                   "pycanary-queues"}
            bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
                   if r["health"] != "ok"]
            assert bad == []

            # every query of the Grafana dashboard is PromQL this Prometheus runs
            failed = {}
            exprs = [e for e in expressions(load()) if not e.startswith("label_values(")]
            assert len(exprs) > 20
            for expr in exprs:
                try:
                    prom.query(promql(expr, QUEUE))
                except urllib.error.HTTPError as exc:
                    failed[expr] = exc.read().decode()
            assert failed == {}
            # and the ones on gauges answer with the deployment's values
            weight = prom.query(promql(
                'max(canary_traffic_split_percentage{queue=~"$queue",lane="canary"})', QUEUE))
            assert value(weight) == 50.0
        finally:
            prom.stop()
    seen.leader.release()
