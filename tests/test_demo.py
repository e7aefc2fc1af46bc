"""`pycanary demo`: both scenarios end as they should, with zero lost jobs, on the embedded
default and on a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pycanary.demo import run_demo
from tests.conftest import REAL_URL


@pytest.mark.slow
@pytest.mark.parametrize("url", ["memory://", REAL_URL], ids=["memory", "redis"])
@pytest.mark.parametrize(("scenario", "outcome"), [("healthy", "completed"),
                                                   ("regression", "rolled_back")])
def test_demo_outcome_and_nothing_lost(url: str, scenario: str, outcome: str) -> None:
    result = run_demo(url, scenario=scenario, speed=300, rate=150)
    assert result.outcome == outcome, result.summary()
    assert result.lost == 0
    assert result.enqueued > 300
    assert result.processed["v1"] > 0 and result.processed["v2"] > 0
    types = [e["type"] for e in result.events]
    if outcome == "completed":
        assert types.count("stage") == 2 and "awaiting_promotion" in types
        assert types[-2:] == ["promoted", "completed"]
    else:
        assert "rollback" in types and types[-1] == "rolled_back"
        # (detection time is asserted by the controller scenario tests; at this speed a
        # 30 s interval is 0.1 s of real time, too short to gather samples)
        assert result.regression_to_rollback_s is not None
        assert result.weight_zero_ms is not None and 0 <= result.weight_zero_ms < 1000


def test_demo_cli_json_and_bad_scenario() -> None:
    res = subprocess.run([sys.executable, "-m", "pycanary.cli", "demo", "--speed", "400",
                          "--json"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["outcome"] == "completed" and data["lost"] == 0
    res = subprocess.run([sys.executable, "-m", "pycanary.cli", "demo", "--scenario", "chaos"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error: scenario:")
