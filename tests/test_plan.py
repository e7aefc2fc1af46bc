"""Plan files: the design card's format, the extensions, and errors that name the bad field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycanary.plan import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_INTERVAL_S,
    DEFAULT_MIN_SAMPLES,
    Plan,
    PlanError,
    format_duration,
    load_plan,
    parse_duration,
    parse_plan,
    percent_to_bp,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "plans"

# The design card's plan, character for character (seed/canary-deployments.md).
CARD = """\
canary_config:
  stages:
    - percentage: 5
      duration: 10m
      auto_promote: true
      conditions:
        max_error_rate: 0.5
        max_latency_increase: 15
    - percentage: 15
      duration: 15m
      auto_promote: true
      conditions:
        max_error_rate: 1.0
        max_latency_increase: 10
    - percentage: 50
      duration: 20m
      auto_promote: false  # Manual approval required
      conditions:
        max_error_rate: 1.0
        max_latency_increase: 5
"""


def body(**over: object) -> dict[str, object]:
    """A minimal valid canary_config body with overrides."""
    b: dict[str, object] = {"stages": [{"percentage": 5, "duration": "10m"}]}
    b.update(over)
    return b


def errors_of(source: object) -> list[str]:
    with pytest.raises(PlanError) as exc:
        parse_plan(source)  # type: ignore[arg-type]
    return exc.value.lines


# ---------------------------------------------------------------------------------------------
# The design card and the examples


def test_design_card_parses_verbatim() -> None:
    plan = parse_plan(CARD)
    assert [s.percentage for s in plan.stages] == [5.0, 15.0, 50.0]
    assert [s.weight_bp for s in plan.stages] == [500, 1500, 5000]
    assert [s.duration for s in plan.stages] == [600, 900, 1200]
    assert [s.auto_promote for s in plan.stages] == [True, True, False]
    assert [s.conditions.max_error_rate for s in plan.stages] == [0.5, 1.0, 1.0]
    assert [s.conditions.max_latency_increase for s in plan.stages] == [15.0, 10.0, 5.0]
    assert plan.interval == DEFAULT_INTERVAL_S == 30
    assert plan.total_duration == 2700
    assert plan.sticky is True and plan.salt == "" and plan.max_weight_bp == 10_000


def test_example_design_card_file_is_the_card() -> None:
    assert load_plan(EXAMPLES / "design-card.yaml") == parse_plan(CARD)


@pytest.mark.parametrize(
    "name", ["design-card.yaml", "conservative.yaml", "aggressive.yaml", "tenant-first.yaml"]
)
def test_examples_parse(name: str) -> None:
    plan = load_plan(EXAMPLES / name)
    assert plan.stages
    for i in range(len(plan.stages)):
        plan.settings(i)  # every stage resolves
    assert parse_plan(plan.to_dict()) == plan


def test_tenant_first_example() -> None:
    plan = load_plan(EXAMPLES / "tenant-first.yaml")
    assert plan.stages[0].weight_bp == 0
    # internal at 50%, not 100%: a tenant at 100% cannot be compared within its stratum
    assert plan.tenant_weights_bp(0) == {"internal": 5_000, "bigbank": 0}
    assert plan.tenant_weights_bp(3) == {"internal": 5_000, "bigbank": 5_000}
    assert [s.weight_bp for s in plan.stages] == [0, 500, 2500, 5000]


def test_conservative_example_settings() -> None:
    plan = load_plan(EXAMPLES / "conservative.yaml")
    s0, s4 = plan.settings(0), plan.settings(4)
    assert (s0.max_error_rate, s0.max_latency_increase, s0.min_samples) == (0.5, 10.0, 300)
    assert (s4.max_error_rate, s4.max_latency_increase, s4.auto_promote) == (None, 5.0, False)
    assert plan.max_weight_bp == 5000 and plan.deadline == 6 * 3600
    assert plan.statistical.alpha == 0.005 and plan.statistical.run_time_tolerance == 5.0


# ---------------------------------------------------------------------------------------------
# Settings resolution


def test_settings_resolve_stage_then_top_then_default() -> None:
    plan = parse_plan(
        body(
            max_error_rate=2,
            failure_threshold=5,
            on_no_data="fail",
            stages=[
                {"percentage": 5, "duration": 60, "conditions": {"max_error_rate": 0.25}},
                {"percentage": 20, "duration": 60, "auto_promote": False},
            ],
        )
    )
    s0, s1 = plan.settings(0), plan.settings(1)
    assert s0.max_error_rate == 0.25 and s1.max_error_rate == 2.0
    assert s0.failure_threshold == s1.failure_threshold == 5
    assert s0.on_no_data == "fail"
    assert s0.min_samples == DEFAULT_MIN_SAMPLES == 100
    assert s0.max_latency_increase is None and s0.max_throughput_decrease is None
    assert (s0.last, s1.last, s1.auto_promote) == (False, True, False)
    assert s1.weight_bp == 2000 and s1.duration_s == 60
    with pytest.raises(IndexError):
        plan.settings(2)


def test_defaults() -> None:
    plan = parse_plan(body())
    s = plan.settings(0)
    assert (s.min_samples, s.failure_threshold, s.on_no_data) == (
        DEFAULT_MIN_SAMPLES,
        DEFAULT_FAILURE_THRESHOLD,
        "hold",
    )
    assert plan.deadline is None and plan.max_weight is None and plan.tenants == {}
    st_ = plan.statistical
    # threshold_alpha None: the threshold rules share alpha (one budget per deployment)
    assert (st_.enabled, st_.alpha, st_.decisive, st_.threshold_alpha) == (True, 0.01, True, None)
    assert (st_.run_time_tolerance, st_.error_margin, st_.safety_alpha) == (10.0, 2.0, 0.05)
    assert (s.on_inconclusive, s.inconclusive_checks, s.max_cpu_increase) == ("pause", 20, None)
    assert s.deadline_s == 3 * plan.stages[0].duration


def test_new_condition_fields_resolve_per_stage() -> None:
    plan = parse_plan(body(on_inconclusive="rollback", inconclusive_checks=4, max_cpu_increase=20,
                           stages=[{"percentage": 5, "duration": "10m", "deadline": "15m",
                                    "conditions": {"on_inconclusive": "hold"}},
                                   {"percentage": 10, "duration": "10m"}]))
    s0, s1 = plan.settings(0), plan.settings(1)
    assert (s0.on_inconclusive, s0.inconclusive_checks, s0.deadline_s) == ("hold", 4, 900)
    assert (s1.on_inconclusive, s1.max_cpu_increase, s1.deadline_s) == ("rollback", 20.0, 1800)


@pytest.mark.parametrize(("where", "over", "line"), [
    ("cond", {"max_error_rate_increase": 0},
     "max_error_rate_increase: must be above 0 (a zero tolerance fails on noise alone; use 0.1 "
     "or more), got 0"),
    ("stat", {"run_time_tolerance": 0},
     "statistical.run_time_tolerance: must be above 0 (a zero tolerance fails on noise alone; "
     "use 1 or more), got 0"),
    ("stat", {"error_margin": 1},
     "statistical.error_margin: must be above 1 and at most 100, got 1"),
    ("cond", {"on_inconclusive": "promote"},
     "on_inconclusive: must be one of hold, pause, rollback, got 'promote'"),
])
def test_zero_tolerances_and_new_fields_are_checked(where: str, over: dict, line: str) -> None:
    b = body(**over) if where == "cond" else body(statistical=over)
    assert errors_of(b) == [line]


def test_stage_deadline_must_cover_its_duration() -> None:
    b = body(stages=[{"percentage": 5, "duration": "10m", "deadline": "5m"}])
    assert errors_of(b) == ["stages[0].deadline: shorter than the stage's duration 10m, got 5m"]


def test_stage_tenants_merge_over_top_level() -> None:
    plan = parse_plan(
        body(
            tenants={"internal": 100, "acme": 10},
            stages=[
                {"percentage": 5, "duration": 60},
                {"percentage": 10, "duration": 60, "tenants": {"acme": 50, "new": 12.25}},
            ],
        )
    )
    assert plan.tenant_weights_bp(0) == {"internal": 10_000, "acme": 1000}
    assert plan.tenant_weights_bp(1) == {"internal": 10_000, "acme": 5000, "new": 1225}
    assert plan.settings(1).tenants_bp == plan.tenant_weights_bp(1)


def test_zero_percent_stage_allowed_when_a_tenant_is_on() -> None:
    plan = parse_plan(body(tenants={"internal": 100}, stages=[{"percentage": 0, "duration": 60}]))
    assert plan.stages[0].weight_bp == 0


def test_null_blocks_mean_empty() -> None:
    plan = parse_plan(
        "canary_config:\n  statistical:\n  stages:\n    - percentage: 5\n"
        "      duration: 1m\n      conditions:\n"
    )
    assert plan.stages[0].conditions.max_error_rate is None
    assert plan.statistical.alpha == 0.01


def test_bare_body_accepted() -> None:
    assert parse_plan(body()) == parse_plan({"canary_config": body()})


# ---------------------------------------------------------------------------------------------
# Durations and percentages


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h30m", 5400),
        ("1h", 3600),
        ("2d", 172_800),
        ("1d2h3m4s", 93_784),
        (45, 45),
        ("45", 45),
        (" 5m ", 300),
        (60.0, 60),
    ],
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "must be above 0s, got '0s'"),
        (0, "must be above 0s, got 0"),
        (-5, "must be above 0s, got -5"),
        ("-5", "must be above 0s, got '-5'"),
        ("abc", "must be a duration like 30s, 10m, 1h30m, got 'abc'"),
        ("1.5h", "must be a duration like 30s, 10m, 1h30m, got '1.5h'"),
        ("10 m", "must be a duration like 30s, 10m, 1h30m, got '10 m'"),
        ("30m1h", "must be a duration like 30s, 10m, 1h30m, got '30m1h'"),
        ("", "must be a duration like 30s, 10m, 1h30m, got ''"),
        (True, "must be a duration like 30s, 10m, 1h30m, got true"),
        (1.5, "must be whole seconds, got 1.5"),
        (None, "must be a duration like 30s, 10m, 1h30m, got null"),
    ],
)
def test_bad_durations(value: object, message: str) -> None:
    lines = errors_of(body(stages=[{"percentage": 5, "duration": value}]))
    assert lines[0] == f"stages[0].duration: {message}"


@pytest.mark.parametrize("field", ["interval", "deadline"])
def test_zero_interval_and_deadline_refused(field: str) -> None:
    assert errors_of(body(**{field: "0s"})) == [f"{field}: must be above 0s, got '0s'"]


@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration_examples() -> None:
    assert [format_duration(s) for s in (5400, 30, 600, 90061, 0)] == [
        "1h30m",
        "30s",
        "10m",
        "1d1h1m1s",
        "0s",
    ]


@pytest.mark.parametrize(
    ("value", "bp"), [(0, 0), (5, 500), (12.25, 1225), ("0.5", 50), ("7.5%", 750), (99.99, 9999)]
)
def test_percent_basis_points(value: object, bp: int) -> None:
    plan = parse_plan(body(tenants={"t": value}))
    assert plan.tenant_weights_bp(0) == {"t": bp}


@given(st.integers(min_value=0, max_value=10_000))
def test_every_basis_point_round_trips(bp: int) -> None:
    pct = bp / 100
    assert percent_to_bp(pct) == bp
    plan = parse_plan(body(tenants={"t": pct}))
    assert plan.tenant_weights_bp(0)["t"] == bp


# ---------------------------------------------------------------------------------------------
# Errors: path, message, order


def test_error_message_form_from_the_brief() -> None:
    lines = errors_of(
        body(stages=[{"percentage": 5, "duration": "10m"}, {"percentage": 150, "duration": "1h"}])
    )
    assert lines == ["stages[1].percentage: must be 0-100, got 150"]


@pytest.mark.parametrize(
    ("where", "value", "line"),
    [
        ("percentage", -1, "stages[0].percentage: must be 0-100, got -1"),
        ("percentage", 12.345, "stages[0].percentage: must have at most two decimals, got 12.345"),
        ("percentage", "lots", "stages[0].percentage: must be a percentage 0-100, got 'lots'"),
        ("percentage", True, "stages[0].percentage: must be a percentage 0-100, got true"),
        ("auto_promote", "yes", "stages[0].auto_promote: must be true or false, got 'yes'"),
        ("conditions", 5, "stages[0].conditions: must be a mapping, got 5"),
    ],
)
def test_stage_field_errors(where: str, value: object, line: str) -> None:
    stage = {"percentage": 5, "duration": 60, where: value}
    assert errors_of(body(stages=[stage]))[0] == line


@pytest.mark.parametrize(
    ("cond", "value", "line"),
    [
        ("max_error_rate", 101, "must be 0-100, got 101"),
        ("max_error_rate_increase", -0.5, "must be 0-100, got -0.5"),
        ("max_latency_increase", -1, "must be >= 0, got -1"),
        ("max_throughput_decrease", 100.5, "must be 0-100, got 100.5"),
        ("min_samples", 0, "must be 1-10000000, got 0"),
        ("min_samples", 2.5, "must be a whole number 1-10000000, got 2.5"),
        ("failure_threshold", 0, "must be 1-1000, got 0"),
        ("on_no_data", "skip", "must be one of hold, fail, pass, got 'skip'"),
    ],
)
def test_condition_errors_top_and_stage(cond: str, value: object, line: str) -> None:
    assert errors_of(body(**{cond: value})) == [f"{cond}: {line}"]
    stage = {"percentage": 5, "duration": 60, "conditions": {cond: value}}
    assert errors_of(body(stages=[stage])) == [f"stages[0].conditions.{cond}: {line}"]


def test_latency_increase_may_exceed_100() -> None:
    assert parse_plan(body(max_latency_increase=250)).settings(0).max_latency_increase == 250


def test_unknown_keys_refused_with_hint_at_every_depth() -> None:
    assert errors_of(body(intervall="30s")) == [
        "intervall: unknown field; did you mean 'interval'?"
    ]
    lines = errors_of(
        body(stages=[{"percentage": 5, "duration": 60, "conditions": {"max_eror_rate": 1}}])
    )
    assert lines == [
        "stages[0].conditions.max_eror_rate: unknown field; did you mean 'max_error_rate'?"
    ]
    lines = errors_of(body(statistical={"alpah": 0.01}))
    assert lines == ["statistical.alpah: unknown field; did you mean 'alpha'?"]
    lines = errors_of(body(zzz=1))
    assert lines[0].startswith("zzz: unknown field (allowed: ")
    assert errors_of({"canary_config": body(), "extra": 1}) == [
        "extra: unknown field (allowed at the top: canary_config)"
    ]
    assert errors_of({"canary_confg": body()})[0] == (
        "canary_confg: unknown field; did you mean 'canary_config'?"
    )


def test_typo_line_comes_before_the_missing_field_it_causes() -> None:
    lines = errors_of(body(stages=[{"percentag": 5, "duration": 60}]))
    assert lines == [
        "stages[0].percentag: unknown field; did you mean 'percentage'?",
        "stages[0].percentage: required field missing",
    ]


def test_several_errors_several_lines() -> None:
    lines = errors_of(
        body(
            salt=123,
            sticky="yes",
            statistical={"alpha": 0.5},
            stages=[{"percentage": 500, "duration": "soon"}],
        )
    )
    assert lines == [
        "stages[0].percentage: must be 0-100, got 500",
        "stages[0].duration: must be a duration like 30s, 10m, 1h30m, got 'soon'",
        "sticky: must be true or false, got 'yes'",
        "salt: must be a string (quote it in YAML), got 123",
        "statistical.alpha: must be above 0 and at most 0.2, got 0.5",
    ]
    with pytest.raises(ValueError, match=r"^stages\[0\]\.percentage: must be 0-100, got 500\n"):
        parse_plan(body(salt=1, stages=[{"percentage": 500, "duration": 60}]))


def test_stage_order_and_guards() -> None:
    lines = errors_of(
        body(
            max_weight=20,
            tenants={"internal": 100},
            stages=[
                {"percentage": 15, "duration": 60},
                {"percentage": 5, "duration": 60},
                {"percentage": 30, "duration": 60, "tenants": {"acme": 25}},
            ],
        )
    )
    assert lines == [
        "tenants.internal: above max_weight 20, got 100",
        "stages[1].percentage: must not be below the previous stage's 15, got 5",
        "stages[2].percentage: above max_weight 20, got 30",
        "stages[2].tenants.acme: above max_weight 20, got 25",
    ]


def test_equal_consecutive_stages_allowed() -> None:
    plan = parse_plan(body(stages=[{"percentage": 5, "duration": 60}] * 2))
    assert len(plan.stages) == 2


@pytest.mark.parametrize(
    ("over", "line"),
    [
        (
            {"stages": [{"percentage": 100, "duration": 60}]},
            "stages[0].percentage: must be below 100 (the stable lane would get nothing to "
            "compare with; promotion after the last stage takes the canary to 100%), got 100",
        ),
        (
            {"stages": [{"percentage": 0, "duration": 60}]},
            "stages[0].percentage: sends no jobs to the canary (0% and no tenant above 0), got 0",
        ),
        (
            {"stages": [{"percentage": 5, "duration": "10s"}]},
            "stages[0].duration: shorter than interval 30s (the stage would end before its "
            "first check), got 10s",
        ),
        ({"deadline": "5m"}, "deadline: shorter than the stages' total duration 10m, got 5m"),
        ({"max_weight": 0}, "max_weight: must be above 0, got 0"),
        ({"stages": []}, "stages: must list at least one stage, got []"),
        ({"stages": "all"}, "stages: must be a list, got 'all'"),
        ({"stages": None}, "stages: must be a list, got null"),
        ({"tenants": {"acme": 101}}, "tenants.acme: must be 0-100, got 101"),
        (
            {"tenants": {"bad name": 5}},
            "tenants: tenant names are 1-128 characters of A-Za-z0-9._:-, got 'bad name'",
        ),
        ({"salt": "x" * 300}, "salt: must be at most 256 characters, got '" + "x" * 56 + "..."),
    ],
)
def test_plan_level_refusals(over: dict[str, object], line: str) -> None:
    assert errors_of(body(**over))[0] == line


def test_missing_stages() -> None:
    assert errors_of({"interval": 30}) == ["stages: required field missing"]


def test_not_a_mapping() -> None:
    assert errors_of([1, 2]) == ["canary_config: must be a mapping, got [1, 2]"]
    assert errors_of({"canary_config": 3}) == ["canary_config: must be a mapping, got 3"]
    assert errors_of("") == ["<string>: the plan is empty"]


# ---------------------------------------------------------------------------------------------
# Files and YAML


def test_yaml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "plan.yaml"
    f.write_text("canary_config:\n  stages:\n    - percentage: 5\n   - duration: 1m\n")
    with pytest.raises(PlanError) as exc:
        load_plan(f)
    assert exc.value.lines == [f"{f}:4: expected <block end>, but found '<block sequence start>'"]


def test_duplicate_keys_refused_with_line(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("canary_config:\n  interval: 30s\n  stages: []\n  interval: 1m\n")
    with pytest.raises(PlanError) as exc:
        load_plan(f)
    assert exc.value.lines == [f"{f}:4: duplicate key 'interval'"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"cannot read plan"):
        load_plan(tmp_path / "nope.yaml")


def test_validation_errors_from_a_file_name_the_field(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(CARD.replace("percentage: 15", "percentage: 150"))
    with pytest.raises(PlanError) as exc:
        load_plan(f)
    assert exc.value.lines == ["stages[1].percentage: must be 0-100, got 150"]


def test_json_text_is_yaml() -> None:
    assert parse_plan(json.dumps({"canary_config": body()})) == parse_plan(body())


def test_plan_is_immutable() -> None:
    plan = parse_plan(body())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        plan.interval = 5
    assert plan.interval == parse_plan(body()).interval


# ---------------------------------------------------------------------------------------------
# Round trip of generated plans

percent = st.integers(min_value=1, max_value=9999).map(lambda bp: bp / 100)
stage_st = st.fixed_dictionaries(
    {
        "duration": st.integers(min_value=30, max_value=7200),
        "auto_promote": st.booleans(),
        "conditions": st.fixed_dictionaries(
            {},
            optional={
                "max_error_rate": percent,
                "max_latency_increase": st.integers(min_value=0, max_value=500),
                "min_samples": st.integers(min_value=1, max_value=10_000),
                "on_no_data": st.sampled_from(["hold", "fail", "pass"]),
            },
        ),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(stage_st, min_size=1, max_size=5),
    st.lists(percent, min_size=5, max_size=5),
    st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), percent, max_size=3),
    st.booleans(),
)
def test_generated_plans_round_trip(
    stages: list[dict[str, object]], pcts: list[float], tenants: dict[str, float], sticky: bool
) -> None:
    for s, p in zip(stages, sorted(pcts), strict=False):
        s["percentage"] = p
    plan = parse_plan({"canary_config": {"stages": stages, "tenants": tenants, "sticky": sticky}})
    again = parse_plan(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert isinstance(plan, Plan)
    assert all(0 < s.weight_bp < 10_000 for s in plan.stages)


# ---------------------------------------------------------------------------------------------
# pycanary plan check (issue 10 item 6)


@pytest.mark.parametrize(("text", "per_min"), [
    ("2000/min", 2000.0), ("30/s", 1800.0), ("120000/h", 2000.0), ("500", 500.0),
    (" 12.5 / sec ", 750.0)])
def test_plan_check_rates(text: str, per_min: float) -> None:
    from pycanary.plan_check import parse_rate

    assert parse_rate(text) == pytest.approx(per_min)


@pytest.mark.parametrize("text", ["fast", "-5/min", "0/min", "1e9/s", ""])
def test_plan_check_bad_rates_name_the_field(text: str) -> None:
    from pycanary.errors import ValidationError
    from pycanary.plan_check import parse_rate

    with pytest.raises(ValidationError) as exc:
        parse_rate(text)
    assert exc.value.field == "rate"


def test_plan_check_error_rates() -> None:
    from pycanary.errors import ValidationError
    from pycanary.plan_check import parse_error_rate

    assert parse_error_rate("1%") == pytest.approx(0.01)
    assert parse_error_rate("0.002") == pytest.approx(0.002)
    for bad in ("x", "60%", "-1%"):
        with pytest.raises(ValidationError):
            parse_error_rate(bad)


def test_plan_check_warns_about_stages_too_short_for_their_traffic() -> None:
    from pycanary.plan_check import stage_warnings

    plan = load_plan(EXAMPLES / "design-card.yaml")
    assert stage_warnings(plan, 10_000) == []
    assert stage_warnings(plan, 100) == [
        "stages[0]: 10m at 5% of 100 jobs/min gives ~50 jobs to the smaller lane, below "
        "min_samples 100: the stage is too short for its traffic"]


def test_plan_check_simulates_through_the_real_analysis(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pycanary.cli import app
    from pycanary.plan_check import check_plan

    lines = []
    report = check_plan(EXAMPLES / "quick.yaml", 600, 0.01, runs=2,
                        progress=lambda d, t: lines.append((d, t)))
    assert lines[-1] == (6, 6)
    assert [r["key"] for r in report.results] == ["aa", "errors_x2", "errors_x3", "p95_20",
                                                  "p95_50"]
    # 600 jobs/min cannot fill quick.yaml's 45 s stages: the checker says so
    assert any("too short for its traffic" in w for w in report.warnings)
    res = CliRunner().invoke(app, ["plan", "check", str(EXAMPLES / "quick.yaml"), "--rate",
                                   "600/min", "--runs", "1", "--json"])
    assert res.exit_code == 1, res.output
    body = json.loads(res.stdout)
    assert body["ok"] is False and body["warnings"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("canary_config:\n  max_error_rate_increase: 0\n  stages: []\n")
    res = CliRunner().invoke(app, ["plan", "check", str(bad), "--rate", "1000/min"])
    assert res.exit_code == 2
    assert "max_error_rate_increase: must be above 0" in res.stderr


_CHECK_LINE = re.compile(r"`pycanary plan check examples/plans/(?P<file>[\w-]+\.yaml) "
                         r"--rate (?P<rate>\S+) --error-rate (?P<err>\S+)")


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_plan_passes_plan_check_for_the_traffic_it_names(path: Path) -> None:
    """Each example plan's header names the traffic it is meant for and the `plan check`
    command that passes there; the plan must still pass it (fewer runs, fixed seed)."""
    from pycanary.plan_check import check_plan, parse_error_rate, parse_rate

    found = _CHECK_LINE.search(path.read_text())
    assert found, f"{path.name}: header has no `pycanary plan check ... --rate --error-rate`"
    assert found["file"] == path.name
    report = check_plan(path, parse_rate(found["rate"]), parse_error_rate(found["err"]),
                        runs=40, seed="example-plans")
    assert report.warnings == [], report.text()
