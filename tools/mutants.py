"""Mutation check: do the tests catch one-line bugs in the scripts and the rules?

Each mutant below replaces one exact substring (it must occur exactly once in its file, else
the mutant is reported "stale": the code moved on and the list needs an update) in a COPY of
the repository (without .venv and .git), then runs the mutant's test files there with this
checkout's .venv python, with cwd and PYTHONPATH at the copy, so the copy's pycanary and lua/
are the ones imported (checked once per run). A mutant is "killed" when pytest fails (or times
out), "survived" when it passes. Exit status 1 if any mutant survives that is not listed as an
accepted survivor, or if any is stale.

    make mutants                        # or: .venv/bin/python tools/mutants.py
    .venv/bin/python tools/mutants.py --only ack_late,deadline_gate  # some of them
    .venv/bin/python tools/mutants.py --all-tests    # the full suite per mutant (slow)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache",
                                "build", "dist", "*.egg-info")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]
    accepted: str = ""  # why surviving is acceptable ("" = it must be killed)


G, D, W = "tests/test_guards.py", "tests/test_deployments.py", "tests/test_worker.py"
R, A = "tests/test_routing_contract.py", "tests/test_analysis.py"
E, Q = "tests/test_analysis_evidence.py", "tests/test_analysis_quality.py"

MUTANTS: list[Mutant] = [
    # the five found by the review
    Mutant("ack_late", "lua/ack_jobs.lua", "    late = late + 1", "    late = late",
           "late acks no longer counted", (G,)),
    Mutant("deadline_gate", "pycanary/analysis/decision.py", "        if at_manual_gate:\n",
           "        if False:\n", "the deadline rolls back a deployment at its manual gate", (G,)),
    Mutant("manual_only_promotes", "pycanary/controller.py",
           "            action = Action.AWAIT_APPROVAL\n", "            pass\n",
           "the manual-only fallback never blocks a promotion", (G,)),
    Mutant("analyses_key_untagged", "pycanary/deployments.py",
           "         qk.analyses(dep.id), qk.outbox],",
           '         f"{conn.keys.prefix}:analyses:{dep.id}", qk.outbox],',
           "the analyses key leaves the queue's hash tag", ("tests/test_slots.py",)),
    Mutant("outbox_not_written", "lua/includes/deployment.lua", "    if kind then\n",
           "    if false then\n", "notable events never reach the outbox (no notifications)",
           ("tests/test_notify.py",)),
    Mutant("gate_ignored", "pycanary/controller.py",
           "                not self._gate_open(dep, gate, decision.next_stage, now, w):\n",
           "                False:\n", "a stage with a webhook gate advances without asking it",
           ("tests/test_notify.py",)),
    Mutant("lua_max_weight_off", "lua/includes/deployment.lua",
           "if weight ~= nil and weight > max_weight then return false end",
           "if false then return false end",
           "deployment scripts' max_weight guard switched off", (G,)),
    # fencing
    Mutant("fence_ignored", "lua/includes/guard.lua",
           "if e == nil or e < cur then return false, false end",
           "if e == nil then return false, false end",
           "every deployment script accepts an older epoch", (G, D)),
    Mutant("fence_include_ignored", "lua/includes/fence.lua",
           "if e == nil or e < cur then return false", "if e == nil then return false",
           "fence_queue and the other fence_ok callers accept an older epoch",
           ("tests/test_leader.py", "tests/test_controller_failover.py")),
    Mutant("promote_unfenced", "lua/deployment_promote.lua",
           "if not raise_fence then return -7 end", "",
           "deployment_promote skips its fence check", (G,)),
    Mutant("finish_unfenced", "lua/deployment_finish.lua",
           "if not raise_fence then return -7 end", "",
           "deployment_finish skips its fence check", (G,)),
    Mutant("update_unfenced", "lua/deployment_update.lua",
           "if not raise_fence then return -7 end", "",
           "deployment_update skips its fence check", (D,)),
    Mutant("epoch_not_incremented", "lua/leader_acquire.lua",
           "local epoch = rcall('INCR', epoch_key)",
           "local epoch = tonumber(rcall('GET', epoch_key) or '1')",
           "a new leadership reuses the previous epoch", ("tests/test_leader.py",)),
    # routing
    Mutant("route_le", "lua/includes/routing.lua", "if n < weight then return 'canary', n end",
           "if n <= weight then return 'canary', n end",
           "bucket == weight goes to canary (weight off by one bucket)", (R,)),
    Mutant("salt_ignored", "lua/includes/routing.lua",
           "if client_bucket ~= '' and client_salt == salt then", "if client_bucket ~= '' then",
           "a client bucket computed with another salt is trusted", (R, "tests/test_producer.py")),
    Mutant("salt_not_hashed", "lua/includes/fnv1a.lua", "return fnv1a32(salt .. key) % 10000",
           "return fnv1a32(key) % 10000", "the sticky hash ignores the deployment's salt",
           (R,)),
    # workers and metrics
    Mutant("fetch_rolled_back", "lua/fetch_jobs.lua",
           "if rcall('SISMEMBER', rolled_back_key, ARGV[2]) == 1 then return -5 end", "",
           "a rolled-back version still fetches jobs", (W, G)),
    Mutant("retried_not_counted", "lua/fail_jobs.lua", "bump(m, 'retried', 1)",
           "bump(m, 'retried', 0)", "retries are not counted in the metrics", (W,)),
    Mutant("dead_not_counted", "lua/fail_jobs.lua", "bump(m, 'dead', 1)",
           "bump(m, 'dead', 0)", "dead letters are not counted in the metrics", (W,)),
    Mutant("totals_not_written", "lua/includes/metrics.lua",
           "    rcall('HINCRBY', total_key, field, n)\n", "",
           "the running totals (the controller's input) are never written", (G, W)),
    Mutant("retry_to_closed_canary", "lua/promote_delayed.lua",
           "if canary_open(config_key) then canary_target = lane_canary end",
           "canary_target = lane_canary", "due retries go to a closed canary lane", (W, G)),
    Mutant("reap_to_closed_canary", "lua/requeue_jobs.lua",
           "if ARGV[1] == 'canary' and canary_open(config_key) then",
           "if ARGV[1] == 'canary' then", "the reaper returns jobs to a closed canary lane",
           (W, G)),
    Mutant("attempts_off_by_one", "pycanary/worker.py", "if attempt < self.max_attempts:",
           "if attempt <= self.max_attempts:", "one attempt more than --max-attempts", (W,)),
    Mutant("worker_late_stats", "pycanary/worker.py", "self.stats.late += int(res[1])",
           "self.stats.late += 0", "the worker's stats miss late acks", (G,)),
    # deployments
    Mutant("rollback_not_marked", "lua/includes/canary_flip.lua",
           "if version ~= '' then rcall('SADD', rolled_back_key, version) end", "",
           "a rolled-back version is not marked (its workers keep taking jobs)", (D,)),
    Mutant("former_stable_forgotten", "lua/includes/canary_flip.lua",
           "if old ~= '' and old ~= new then rcall('ZADD', former_key, now_ms, old) end", "",
           "the old stable version is not remembered (its workers go standby)", (D,)),
    Mutant("second_deployment", "lua/deployment_start.lua",
           "if state and ACTIVE[state] then return -8 end", "",
           "a second deployment may start over an active one", (D,)),
    Mutant("no_outcome_counter", "lua/deployment_finish.lua",
           "if ARGV[3] ~= '' then rcall('HINCRBY', counters_key, ARGV[3], 1) end", "",
           "finished deployments are not counted", (D,)),
    Mutant("drain_batch_plus_one", "lua/drain_lane.lua", "rcall('LPOP', from_lane, max)",
           "rcall('LPOP', from_lane, max + 1)", "a drain call moves one job more than its batch",
           ("tests/test_drain.py",)),
    # analysis and controller rules
    Mutant("promote_without_pass", "pycanary/analysis/decision.py",
           "if elapsed >= cfg.duration_s and analysis.verdict is Verdict.PASS:",
           "if elapsed >= cfg.duration_s:", "a stage is promoted on time without a PASS", (A,)),
    Mutant("gate_skipped", "pycanary/analysis/decision.py", "        if not cfg.auto_promote:\n",
           "        if False:\n", "auto_promote: false is ignored", (A,)),
    # issue 10's evidence: robust to one bad key, to shared outages, promotion on safety
    Mutant("robust_variance_off", "pycanary/analysis/evidence.py",
           "    v = max(v_model, robust_variance([a for a, _ in parts]) + v_plain)",
           "    v = v_model", "the error test ignores clustering (model variance only)", (E,)),
    Mutant("cluster_trim_off", "pycanary/analysis/evidence.py",
           "    if len(parts) >= MIN_TRIMMED_CLUSTERS:", "    if False:",
           "the most extreme cluster is kept in the error test", (E,)),
    Mutant("shared_outage_blamed", "pycanary/analysis/rules.py",
           "    if p_worse <= alpha:", "    if True:",
           "an absolute cap fails the canary for an outage both lanes share", (E,)),
    Mutant("promote_without_safety", "pycanary/analysis/evidence.py",
           "            ev.log_safe >= safe_bound, obs, alpha, short,",
           "            True, obs, alpha, short,",
           "the error test passes without evidence of safety", (E, A, Q)),
    Mutant("manual_only_without_backlog", "pycanary/controller.py",
           "and snaps[lane].backlog > 0:", "and snaps[lane].backlog >= 0:",
           "a quiet lane with nothing waiting triggers the manual-only fallback", (G,)),
]


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | stale | error
    seconds: float = 0.0
    detail: str = ""
    tests: list[str] = field(default_factory=list)


def copy_repo(dst: Path) -> Path:
    shutil.copytree(ROOT, dst, ignore=IGNORE, symlinks=True)
    return dst


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_copy(copy: Path) -> None:
    """The copy's pycanary and lua/ must be the ones imported, not the editable install's."""
    out = subprocess.run(
        [str(PYTHON), "-c", "import pycanary, pycanary.scripts as s; "
         "print(pycanary.__file__); print(s.lua_dir())"],
        cwd=copy, env=env_for(copy), capture_output=True, text=True, check=True).stdout.split()
    real = copy.resolve()
    for p in out:
        if not Path(p).resolve().is_relative_to(real):
            raise SystemExit(f"mutants: the copy imports {p}, not {real}: aborting")


def apply(copy: Path, m: Mutant) -> str | None:
    """Apply the mutant in the copy; the reason it is stale, or None."""
    f = copy / m.path
    if not f.is_file():
        return f"{m.path} not found"
    text = f.read_text()
    n = text.count(m.original)
    if n != 1:
        return f"original found {n} times in {m.path}"
    f.write_text(text.replace(m.original, m.replacement))
    return None


def run_one(m: Mutant, tmp: Path, *, all_tests: bool, slow: bool, timeout: float) -> Result:
    copy = copy_repo(tmp / m.name)
    try:
        stale = apply(copy, m)
        if stale:
            return Result(m, "stale", detail=stale)
        tests = [] if all_tests else list(m.tests)
        cmd = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        if not slow and not all_tests:
            cmd += ["-m", "not slow"]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Result(m, "killed", time.monotonic() - t0, f"timeout after {timeout:.0f}s",
                          tests)
        dt = time.monotonic() - t0
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            return Result(m, "survived", dt, last, tests)
        if proc.returncode in (1, 2) and ("failed" in last or "error" in last):
            failed = next((ln for ln in proc.stdout.splitlines()
                           if ln.startswith(("FAILED", "ERROR"))), last)
            return Result(m, "killed", dt, failed[:110], tests)
        return Result(m, "error", dt, f"pytest exit {proc.returncode}: {last[:90]}", tests)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all-tests", action="store_true", help="run the full suite per mutant")
    ap.add_argument("--slow", action="store_true", help="include tests marked slow")
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    chosen = MUTANTS
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTANTS}
        if unknown:
            ap.error(f"unknown mutants: {sorted(unknown)}")
        chosen = [m for m in MUTANTS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:28} {m.path:32} {m.description}")
        return 0
    if not PYTHON.exists():
        raise SystemExit(f"mutants: {PYTHON} missing: run `make install` first")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pycanary-mutants-") as d:
        tmp = Path(d)
        check_imports_copy(copy_repo(tmp / "_check"))
        shutil.rmtree(tmp / "_check")
        for i, m in enumerate(chosen, 1):
            r = run_one(m, tmp, all_tests=args.all_tests, slow=args.slow, timeout=args.timeout)
            results.append(r)
            print(f"[{i}/{len(chosen)}] {m.name}: {r.status} ({r.seconds:.0f}s) {r.detail}",
                  flush=True)
    print()
    print(f"{'mutant':28} {'status':9} {'secs':>5}  {'file':32} description")
    for r in results:
        m = r.mutant
        status = r.status + ("*" if r.status == "survived" and m.accepted else "")
        print(f"{m.name:28} {status:9} {r.seconds:5.0f}  {m.path:32} {m.description}")
    bad = [r for r in results if r.status in ("stale", "error")
           or (r.status == "survived" and not r.mutant.accepted)]
    killed = sum(r.status == "killed" for r in results)
    survived = sum(r.status == "survived" for r in results)
    accepted = sum(r.status == "survived" and bool(r.mutant.accepted) for r in results)
    stale = sum(r.status == "stale" for r in results)
    print(f"\n{killed}/{len(results)} killed; {survived} survived (* accepted: {accepted}); "
          f"{stale} stale")
    for r in results:
        if r.status == "survived" and r.mutant.accepted:
            print(f"  accepted {r.mutant.name}: {r.mutant.accepted}")
    if bad:
        print("NOT OK: " + ", ".join(f"{r.mutant.name} ({r.status})" for r in bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
