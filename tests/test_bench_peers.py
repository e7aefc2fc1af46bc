"""bench/peers.py: the table's ratios and n/a rows, and one real run of pycanary's part (a
private redis-server, a `pycanary worker` subprocess) with a peer that is not installed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # its `import _common`, as when run as a script
    spec = importlib.util.spec_from_file_location("peers_bench", ROOT / "bench" / "peers.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["peers_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


PEERS = _bench()


def _fig(rate: float) -> dict[str, float]:
    return {"jobs": 100, "seconds": 100 / rate, "jobs_per_s": rate, "us_per_job": 1e6 / rate}


def test_report_ratios_are_the_peer_over_pycanary_and_failures_say_why() -> None:
    res = {
        "single": {"pycanary": _fig(2000), "rq": _fig(1000), "huey": {"error": "not installed"}},
        "bulk": {"pycanary": _fig(20000), "rq": _fig(5000), "huey": {"error": "not installed"}},
        "drain": {
            "pycanary": {"runs": [{"label": "pf 1", **_fig(1000)},
                                  {"label": "pf 64", **_fig(4000)}]},
            "rq": {"runs": [{"label": "rq fork", "error": "worker exited 1 after 0/9 jobs"},
                            {"label": "rq simple", **_fig(500), "partial": True,
                             "completions": 40, "jobs": 100, "seconds": 7.8}]},
            "huey": {"error": "not installed"},
        },
        "meta": {"peers": ["pycanary", "rq", "huey"], "versions": {"pycanary": "0.1.0"},
                 "apis": {n: {"single": f"{n} one", "bulk": f"{n} many"}
                          for n in ("pycanary", "rq", "huey")},
                 "redis_version": "7", "python": "3", "redis_py": "8", "cpus": 2,
                 "single": 100, "bulk": 100, "drain": 100, "load_start": "1.00 / 1.00 / 1.00",
                 "load_end": "2.00 / 2.00 / 2.00", "elapsed_s": 3.0, "cpu": "cpu"},
    }
    res["drain"]["pycanary"]["best"] = res["drain"]["pycanary"]["runs"][1]
    res["drain"]["rq"]["best"] = res["drain"]["rq"]["runs"][1]
    lines = PEERS.report(res).splitlines()

    def row(start: str) -> list[str]:
        hits = [ln for ln in lines if ln.startswith(start)]
        assert len(hits) == 1, (start, hits)
        return [c.strip() for c in hits[0].strip("|").split("|")]

    assert row("| pycanary | pycanary one") == ["pycanary", "pycanary one", "2,000", "500.0",
                                                 "1.00x"]
    assert row("| rq       | rq one") == ["rq", "rq one", "1,000", "1000.0", "0.50x"]
    assert row("| rq       | rq many") == ["rq", "rq many", "5,000", "200.0", "0.25x"]
    assert row("| huey     | huey one") == ["huey", "huey one", "n/a (not installed)", "", ""]
    # the worker table: each run, ratios to pycanary's best run, cut runs say so
    assert row("| pycanary | pf 64") == ["pycanary", "pf 64 (best)", "4,000", "1.00x"]
    assert row("| pycanary | pf 1") == ["pycanary", "pf 1", "1,000", "0.25x"]
    assert row("| rq       | rq fork") == ["rq", "rq fork",
                                             "n/a (worker exited 1 after 0/9 jobs)", ""]
    assert row("| rq       | rq simple") == ["rq", "rq simple (best)",
                                               "500 (cut at 8s: 40/100 done)", "0.12x"]
    assert row("| huey     | no worker run") == ["huey", "no worker run", "n/a (not installed)",
                                                   ""]
    assert "- load average (1/5/15 min) at start 1.00 / 1.00 / 1.00, at end 2.00 / 2.00 / " \
           "2.00; run took 3s" in lines


def test_a_real_run_measures_pycanary_and_reports_a_missing_peer(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "huey", None)  # import huey -> ImportError
    monkeypatch.delitem(sys.modules, "_peer_huey", raising=False)
    assert PEERS.main(["--quick", "--peers", "pycanary,huey", "--single", "30", "--bulk",
                       "30", "--drain", "120", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["meta"]["peers"] == ["pycanary", "huey"]
    for phase in ("single", "bulk"):
        assert res[phase]["pycanary"]["jobs"] == 30  # 3 rounds of 10
        assert res[phase]["pycanary"]["jobs_per_s"] > 0
        assert res[phase]["huey"] == {"error": "not installed: pip install -e '.[bench]'"}
    runs = res["drain"]["pycanary"]["runs"]
    assert [r["label"] for r in runs] == ["pycanary worker --concurrency 1 --prefetch 64"]
    assert runs[0]["partial"] is False and runs[0]["completions"] == 120
    assert res["drain"]["pycanary"]["best"]["jobs_per_s"] > 0
    assert res["drain"]["huey"] == {"error": "not installed: pip install -e '.[bench]'"}
    # 60 routed jobs at weight 10% (sticky by job id): at most a few to canary
    assert 0 <= res["meta"]["pycanary_canary_share"] < 0.5
