"""A plain (non-editable) install carries the Lua scripts and can run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import pycanary, pycanary.scripts as s
from pycanary import queue_config
assert pycanary.__file__.startswith({target!r}), pycanary.__file__
assert str(s.lua_dir()).startswith({target!r}), s.lua_dir()
conn = pycanary.connect("memory://wheel")
queue_config.set_weight(conn, "payments", 10_000)
print(pycanary.Producer(conn).enqueue("payments", {{"a": 1}}).lane, len(s.load_all()))
from pycanary import demo
assert demo.card_source()[1].startswith({target!r}), demo.card_source()[1]
assert demo.demo_plan()["canary_config"]["stages"]
from pycanary import plan
assert str(plan.plans_dir()).startswith({target!r}), plan.plans_dir()
assert "quick" in plan.named_plans(), plan.named_plans()
"""


def test_wheel_ships_and_runs_lua_scripts(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(ROOT)],
        check=True, timeout=300,
    )
    wheel = next(dist.glob("pycanary-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, timeout=300,
    )
    assert (target / "pycanary" / "lua" / "route_enqueue.lua").is_file()
    assert (target / "pycanary" / "lua" / "includes" / "fnv1a.lua").is_file()
    # every named plan travels with the package (`--plan quick`, the API's plan_name)
    for plan in (ROOT / "examples" / "plans").glob("*.yaml"):
        assert (target / "pycanary" / "plans" / plan.name).read_text() == plan.read_text()
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run(
        [sys.executable, "-c", PROBE.format(target=str(target))],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    lane, count = res.stdout.split()
    assert lane == "canary"
    assert int(count) == len(list((ROOT / "lua").glob("*.lua")))
