"""Read examples/grafana/pycanary.json: its PromQL expressions and the metric names they use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "examples" / "grafana" / "pycanary.json"

_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
#: Grafana's variable query label_values(<selector>, <label>): only the selector is PromQL
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*?)(?:,\s*[a-zA-Z_]\w*)?\)\s*$")
_IDENT = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets, annotations, variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            promql_key = key in ("expr", "definition") or (
                key == "query" and node.get("type") != "datasource")
            if promql_key and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions,
    aggregations, keywords, label names (by/on lists, matchers) or strings."""
    names: set[str] = set()
    grafana = _LABEL_VALUES.match(expr)
    text = grafana.group(1) if grafana else expr
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _LABEL_LISTS):
        text = pattern.sub(" ", text)
    for ident, call in _IDENT.findall(text):
        if not call and ident.lower() not in _KEYWORDS:
            names.add(ident)
    return names


def promql(expr: str, queue: str) -> str:
    """A panel's expression with Grafana's variables filled in, as Prometheus can run it."""
    return (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
            .replace("$queue", queue))
