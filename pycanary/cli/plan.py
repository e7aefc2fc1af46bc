"""Plan files: `plan check` simulates a plan before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import (
    JsonOpt,
    _emit,
    app,
)

plan_app = typer.Typer(help="Check plan files.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")


@plan_app.command("check")
def plan_check_cmd(
    plan_file: Annotated[Path, typer.Argument(help="Plan YAML file, or a shipped plan's name.")],
    rate: Annotated[str, typer.Option("--rate", help="Traffic the plan is for: 2000/min, "
                                      "30/s, 100000/h.")],
    error_rate: Annotated[str, typer.Option("--error-rate", help="Base error rate of first "
                                            "attempts: 1% or 0.01.")] = "1%",
    runs: Annotated[int, typer.Option("--runs", help="Simulated deployments of identical "
                                      "versions (each regression gets half).")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Lint a plan, then simulate it through the real analysis for your traffic.

    Prints false rollbacks, power and median time to rollback (errors x2, x3; p95 +20%, +50%)
    and how often a healthy or a bad canary is promoted, with 95% intervals.

    Example: pycanary plan check examples/plans/design-card.yaml --rate 50000/min --error-rate 0.2%

    Exit codes: 0 no warnings; 1 warnings (power below 80%, healthy canaries not promoted,
    false rollbacks above 1%, stages too short); 2 invalid plan or arguments.
    Progress goes to stderr.
    """
    from ..plan_check import check_plan, parse_error_rate, parse_rate

    per_min, p = parse_rate(rate), parse_error_rate(error_rate)

    def progress(done: int, total: int) -> None:
        if done % 25 == 0 or done == total:
            typer.echo(f"simulated {done}/{total} deployments", err=True)

    report = check_plan(plan_file, per_min, p, runs=runs, progress=progress)
    _emit(report.to_dict(), as_json, report.text())
    raise typer.Exit(1 if report.warnings else 0)
