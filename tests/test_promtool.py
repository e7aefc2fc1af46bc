"""The shipped Prometheus files pass Debian's promtool: the alert rules load, their unit tests
(examples/prometheus/alerts_test.yml) pass, and the scrape config parses. Without promtool the
tests skip, unless PYCANARY_REQUIRE_PROMETHEUS=1 (CI) makes that a failure."""

from __future__ import annotations

from pathlib import Path

from tests.prometheus_tools import promtool

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "prometheus"


def test_alert_rules_pass_promtool_check() -> None:
    r = promtool("check", "rules", "alerts.yml", cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout, r.stdout


def test_alert_rules_unit_tests_pass() -> None:
    r = promtool("test", "rules", "alerts_test.yml", cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_a_broken_rule_is_refused(tmp_path: Path) -> None:
    """The check is real: promtool refuses a rule file with a PromQL syntax error."""
    bad = (EXAMPLES / "alerts.yml").read_text().replace(
        "changes(pycanary_controller_leader_epoch[15m]) > 3",
        "changes(pycanary_controller_leader_epoch[15m] > 3")
    (tmp_path / "alerts.yml").write_text(bad)
    r = promtool("check", "rules", "alerts.yml", cwd=tmp_path)
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def test_scrape_config_parses() -> None:
    # --syntax-only: the config names a token file that exists only where it is deployed
    r = promtool("check", "config", "--syntax-only", "prometheus.yml", cwd=EXAMPLES)
    assert r.returncode == 0, r.stdout + r.stderr
