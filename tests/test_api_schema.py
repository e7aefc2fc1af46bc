"""Property-based tests of the whole API from its own OpenAPI schema (schemathesis 4): for
every operation, generated requests (valid and invalid) never get a 5xx, and every response
(status, content type, body) conforms to the schema, errors included.

Against the ASGI app with an operator token, on a fresh key prefix with a configured queue
(``payments``) that most generated requests name, so they get past the 404s into the
service layer. Bounded: 30 examples per operation, derandomized (the same examples every
run), no deadline; plan checks limited to a few simulated runs and spread-out enqueues to
well under a second, so the whole run stays under two minutes on a busy host.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pycanary import service
from pycanary.api import create_app
from pycanary.api.auth import parse_tokens
from pycanary.connection import Connection
from tests.test_api import OP, OPERATOR, VIEWER, fake_worker

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _mostly(value: Any, known: str) -> Any:
    """``known`` for three generated values in four (chosen by the value itself, so a
    derandomized run stays the same); the generated value otherwise (an unknown or invalid
    name: 404/422)."""
    if not isinstance(value, str):
        return value
    return known if zlib.crc32(value.encode("utf-8", "surrogatepass")) % 4 else value


@pytest.fixture
def api_schema(real_conn: Connection):
    service.configure_queue(real_conn, "payments", stable_version="v1", max_backlog=1000)
    fake_worker(real_conn, "w1", "v2")
    app = create_app(real_conn, tokens=parse_tokens(f"viewer:{VIEWER},operator:{OPERATOR}"))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook("map_path_parameters")
    def known_names(_ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        if params and "queue" in params:
            params["queue"] = _mostly(params["queue"], "payments")
        if params and "name" in params:
            params["name"] = _mostly(params["name"], "quick")
        return params

    @schema.hook("map_body")
    def bounded(ctx: Any, body: Any) -> Any:
        if not isinstance(body, dict):
            return body
        path = ctx.operation.path
        if path.endswith("/plans/check") and isinstance(body.get("runs"), int):
            body["runs"] = max(1, min(body["runs"], 3))  # ~30 ms of CPU per run
        if path.endswith("/jobs") and isinstance(body.get("count"), int):
            body["count"] = max(1, min(body["count"], 50))
            if isinstance(body.get("rate"), int | float) and body["rate"] > 0:
                body["rate"] = max(body["rate"], 1000.0)  # no request sleeps long
        return body

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_error_and_responses_match_the_schema(case) -> None:
    case.call_and_validate(headers=OP, checks=CHECKS)


def test_every_operation_documents_its_error_responses(real_conn: Connection) -> None:
    spec = create_app(real_conn, tokens=None).openapi()
    ops = [(m, p, o) for p, item in spec["paths"].items() for m, o in item.items()]
    assert len(ops) >= 32
    for method, path, op in ops:
        for status in ("401", "403", "404", "409", "413", "422", "503"):
            schema_ref = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema_ref == {"$ref": "#/components/schemas/ErrorEnvelope"}, \
                (method, path, status)
    jobs = spec["paths"]["/v1/queues/{queue}/jobs"]["post"]["responses"]
    assert {"429", "504"} <= set(jobs)
    envelope = spec["components"]["schemas"]["ErrorBody"]
    assert set(envelope["properties"]) == {"code", "message", "field"}
