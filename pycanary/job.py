"""Jobs on the wire (`Envelope`) and as a handler sees them (`Job`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

#: Envelope format version (how the envelope itself is laid out).
ENVELOPE_FORMAT = 1

# One encoder, made once: json.dumps with options builds a new encoder on every call.
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _json_name(name: str | None) -> str:
    """JSON of a validated queue or tenant name: their alphabet needs no escaping."""
    return "null" if name is None else f'"{name}"'


def render_envelope(
    id_json: str, queue: str, payload_json: str, sticky_json: str, tenant: str | None,
    attempts: int, enqueued_at: int, schema: int, ready_at: int | None = None,
) -> str:
    """The envelope's JSON text, from parts already encoded. `Envelope.decode` parses it back.

    Built as one f-string because encoding a dict per job costs more than the round trip
    budget allows; only the payload (and a user's id or sticky key) needs a JSON encoder.
    """
    ready = "" if ready_at is None else f',"ready_at":{ready_at}'
    return (
        f'{{"id":{id_json},"queue":"{queue}","payload":{payload_json},'
        f'"sticky_key":{sticky_json},"tenant":{_json_name(tenant)},"attempts":{attempts},'
        f'"enqueued_at":{enqueued_at},"schema":{schema},"v":{ENVELOPE_FORMAT}{ready}}}'
    )


@dataclass(frozen=True)
class Envelope:
    """The job as pushed onto a lane. ``attempts`` counts attempts already made; ``ready_at``
    is when a retry became due (queue wait of a retry is measured from it)."""

    id: str
    queue: str
    payload: Any
    tenant: str | None
    sticky_key: str | None
    attempts: int
    enqueued_at: int
    schema: int = 1
    format: int = ENVELOPE_FORMAT
    ready_at: int | None = None

    def encode(self) -> str:
        return render_envelope(
            encode_json(self.id), self.queue, encode_json(self.payload),
            encode_json(self.sticky_key), self.tenant, self.attempts, self.enqueued_at,
            self.schema, self.ready_at,
        )

    def next_attempt(self, ready_at: int) -> Envelope:
        return replace(self, attempts=self.attempts + 1, ready_at=ready_at)

    @property
    def waiting_since(self) -> int:
        return self.ready_at if self.ready_at is not None else self.enqueued_at

    @classmethod
    def decode(cls, raw: str | bytes) -> Envelope:
        d = json.loads(raw)
        return cls(
            id=d["id"],
            queue=d["queue"],
            payload=d.get("payload"),
            tenant=d.get("tenant"),
            sticky_key=d.get("sticky_key"),
            attempts=int(d.get("attempts", 0)),
            enqueued_at=int(d["enqueued_at"]),
            schema=int(d.get("schema", 1)),
            format=int(d.get("v", ENVELOPE_FORMAT)),
            ready_at=int(d["ready_at"]) if d.get("ready_at") is not None else None,
        )


@dataclass(frozen=True)
class Job:
    """What a handler receives. ``attempt`` starts at 1."""

    id: str
    queue: str
    payload: Any
    tenant: str | None
    attempt: int
    lane: str
    version: str
    enqueued_at: int
    sticky_key: str | None = None
    schema: int = 1
