"""examples/grafana/pycanary.json: valid JSON of a dashboard whose every query names metrics
that a real /metrics scrape (a real API over a real deployment) serves with samples."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.api_server import running_api
from tests.dashboard import expressions, load, metric_names
from tests.observed import observed_deployment

TOKEN = "viewer-token-for-grafana-test-01"


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, lane) (rate(pycanary_job_duration_seconds_'
            'bucket{queue=~"$queue",lane!="x"}[$__rate_interval]))) / on (queue) group_left '
            '(version) max without (instance) (a:b_c offset 5m) > bool 0 and up')
    assert metric_names(expr) == {"pycanary_job_duration_seconds_bucket", "a:b_c", "up"}
    assert metric_names("label_values(canary_traffic_split_percentage, queue)") == {
        "canary_traffic_split_percentage"}
    assert metric_names('sum(increase(x_total{a="rate(y)"}[24h]))') == {"x_total"}


def test_dashboard_shape() -> None:
    dash = load()
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = [p["title"] for p in panels]
    for wanted in ("Traffic split over time", "Error rate (failed / finished attempts)",
                   "Run time p50 / p95", "Throughput (attempts/s)", "Dead letters",
                   "CPU per job p50 / p95"):
        assert wanted in titles
    # stable vs canary side by side: every panel of that row splits its series by lane
    row = titles.index("Stable vs canary")
    nxt = titles.index("Queue")
    for p in panels[row + 1:nxt]:
        for t in p["targets"]:
            assert "by (lane" in t["expr"] or "by (le, lane)" in t["expr"], (p["title"], t)
            assert "{{lane}}" in t["legendFormat"]
    assert all("$queue" in e for e in expressions(dash["panels"])
               if "leader" not in e)


def test_every_query_metric_is_served_by_metrics(real_conn, tmp_path: Path) -> None:
    seen = observed_deployment(real_conn)
    with running_api(real_conn.keys.prefix, tokens=f"viewer:{TOKEN}",
                     log=tmp_path / "api.log") as base:
        req = urllib.request.Request(f"{base}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
    seen.leader.release()
    sampled = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    used = set().union(*(metric_names(e) for e in expressions(load())))
    assert len(used) >= 15, used
    assert sorted(used - sampled) == []
